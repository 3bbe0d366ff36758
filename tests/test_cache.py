"""The explanation cache: keys that never mix two explanations, entries that are refused unless whole and theirs,
several processes writing at once, the precompute command, and reports that read the cache."""

import dataclasses
import functools
import inspect
import json
import multiprocessing
import threading
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from explain import Explanation, PathSettings, explain, explain_pair, faithfulness
from explain.__main__ import main
from explain.cache import (
    CALLS,
    Cached,
    ExplanationCache,
    cache_directory,
    compute_slots,
    entry_text,
    explanation_key,
    key_digest,
    read_entry,
)
from explain.errors import ExplanationError
from explain.history import DRILL_DOWN_UNITS
from explain.report import build_report
from model.whatif import feature_ranges

STEPS = 8  # few IG steps: these tests are about where explanations come from, not their precision


@pytest.fixture(scope="module")
def top_items(recommender, user):
    return [r.item_id for r in recommender.recommend(user_id=user, k=3)]


@pytest.fixture(scope="module")
def computed(recommender, user, top_items):
    """One explanation computed directly, to compare cached ones with."""
    return explain(recommender, top_items[0], user_id=user, n_steps=STEPS)


def assert_same_numbers(ours: Explanation, theirs: Explanation) -> None:
    """The same explanation, computed twice: every value equal to float rounding (timings differ)."""
    assert (ours.item_id, ours.user_id, ours.query, ours.checkpoint_id) == \
        (theirs.item_id, theirs.user_id, theirs.query, theirs.checkpoint_id)
    assert ours.score == pytest.approx(theirs.score, abs=1e-6)
    assert [p.kind for p in ours.parts] == [p.kind for p in theirs.parts]
    for mine, other in zip(ours.parts, theirs.parts):
        assert mine.names == other.names
        np.testing.assert_allclose(mine.values, other.values, atol=1e-6)


def an_override(recommender) -> float:
    """A value item_popularity takes in this data: the middle of its range."""
    low, high = feature_ranges(recommender).loc["item_popularity", ["low", "high"]]
    return float((low + high) / 2)


def key(recommender, item, **arguments):
    return explanation_key(recommender, "explain", (item,), arguments)


# ---- keys ------------------------------------------------------------------------------------------------------

def other_values(recommender, user):
    """For every argument explain and explain_pair take (after the model and the items), a value other than its
    default. A new argument must be added here, so that the test below shows it changes the key."""
    history = recommender.dataset.user_events(user)
    return {
        "user_id": next(u for u in recommender.user_ids if u != user), "query": "wool sock", "n_steps": STEPS + 1, "history": history.iloc[:-1],
        "baseline": "pad", "method": "riemann_middle", "internal_batch_size": 4, "drill_down": 2,
        "feature_overrides": {"item_popularity": 0.5}, "at": "2020-01-01",
    }


def test_every_argument_and_every_path_setting_is_in_the_key(recommender, user, top_items):
    changes = other_values(recommender, user)
    for call, function in CALLS.items():
        if call == "faithfulness":  # keyed by the explanation it tests: its own test below
            continue
        parameters = list(inspect.signature(function).parameters)
        items = tuple(top_items[: 2 if call == "explain_pair" else 1])
        parameters = parameters[1 + len(items):]
        assert set(parameters) == set(changes), f"{call}: give the test a value for {set(parameters) ^ set(changes)}"
        base = {"user_id": user}
        plain = explanation_key(recommender, call, items, base)
        for name in parameters:
            changed = explanation_key(recommender, call, items, {**base, name: changes[name]})
            assert key_digest(changed) != key_digest(plain), f"{call}: {name} does not change the key"
    # The IG settings object's every field is an argument of both calls, so it is keyed too.
    assert {f.name for f in fields(PathSettings)} <= set(changes)


def test_the_same_request_said_two_ways_is_one_key(recommender, user, top_items):
    item = top_items[0]
    assert key(recommender, item, user_id=user) == key(recommender, item, user_id=user, query=None, n_steps=50,
                                                       drill_down=DRILL_DOWN_UNITS)  # explain's own defaults
    assert key(recommender, item, user_id=user, n_steps=np.int64(16)) == key(recommender, item, user_id=user,
                                                                             n_steps=16)
    history = recommender.dataset.user_events(user)
    assert key(recommender, item, user_id=user, history=history) == key(recommender, item, user_id=user,
                                                                        history=history.copy())
    assert key(recommender, item, user_id=user, feature_overrides={"a": 1.0, "b": 2.0}) == \
        key(recommender, item, user_id=user, feature_overrides={"b": 2.0, "a": 1.0})


def test_an_edit_to_one_event_changes_the_key(recommender, user, top_items):
    history = recommender.dataset.user_events(user)
    edited = history.copy()
    edited.iloc[0, edited.columns.get_loc("event")] = "purchase" if edited["event"].iloc[0] != "purchase" else "view"
    assert key(recommender, top_items[0], user_id=user, history=history) != \
        key(recommender, top_items[0], user_id=user, history=edited)


def test_another_checkpoint_or_data_never_hits(recommender, user, top_items, tmp_path, monkeypatch):
    cache = ExplanationCache(tmp_path)
    first = cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    monkeypatch.setattr(recommender, "checkpoint_id", "another0model")
    monkeypatch.setattr(recommender, "metadata", {**recommender.metadata, "checkpoint_id": "another0model"})
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "computed"
    assert first.source == "computed"
    monkeypatch.undo()
    monkeypatch.setattr(recommender.dataset, "meta", dataclasses.replace(recommender.dataset.meta,
                                                                         fingerprint="other-data"))
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "computed"
    monkeypatch.undo()
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "memory"
    assert len(list(tmp_path.rglob("*.json"))) == 3  # one entry each, under its own checkpoint's folder
    assert {p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.json")} == \
        {recommender.checkpoint_id, "another0model"}


def test_a_model_that_is_not_a_saved_checkpoint_is_never_cached(recommender, user, top_items, tmp_path, monkeypatch):
    monkeypatch.setattr(recommender, "metadata", None)  # as a model being trained is
    cache = ExplanationCache(tmp_path)
    for _ in range(2):
        assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "computed"
    assert not list(tmp_path.rglob("*.json"))


def test_an_argument_that_cannot_be_keyed_is_refused(recommender, user, top_items):
    with pytest.raises(ExplanationError, match="cannot key"):
        key(recommender, top_items[0], user_id=user, query=object())
    with pytest.raises(ExplanationError, match="unexpected keyword"):
        key(recommender, top_items[0], user_id=user, steps=8)


def test_a_deletion_test_is_keyed_by_the_explanation_it_tests_and_its_every_argument(recommender, user, top_items,
                                                                                     computed):
    other = explain(recommender, top_items[1], user_id=user, n_steps=STEPS)
    plain = explanation_key(recommender, "faithfulness", (computed,), {})
    assert plain == explanation_key(recommender, "faithfulness", (Explanation.from_dict(computed.to_dict()),), {})
    assert key_digest(plain) != key_digest(explanation_key(recommender, "faithfulness", (other,), {}))
    changes = {"history": recommender.dataset.user_events(user).iloc[:-1], "at": "2020-01-01", "k_max": 3,
               "random_draws": 2, "seed": 1, "agreement": True, "max_evals": 50}
    parameters = list(inspect.signature(faithfulness).parameters)[2:]
    assert set(parameters) == set(changes), f"give the test a value for {set(parameters) ^ set(changes)}"
    for name in parameters:
        changed = explanation_key(recommender, "faithfulness", (computed,), {name: changes[name]})
        assert key_digest(changed) != key_digest(plain), f"{name} does not change the key"


# ---- hits --------------------------------------------------------------------------------------------------------

def test_a_deletion_test_is_computed_once_and_read_back_whole(recommender, user, top_items, computed, tmp_path):
    cache = ExplanationCache(tmp_path)
    found = cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    first = cache.checks(recommender, found)
    again = cache.checks(recommender, found.explanation)
    from_disk = ExplanationCache(tmp_path).checks(recommender, computed)  # the same explanation, computed apart
    assert (first.source, again.source, from_disk.source) == ("computed", "memory", "disk")
    direct = faithfulness(recommender, computed)
    for name in ("deletion_top3_drop", "deletion_random3_words_drop", "history_top3_drop", "history_loo3_drop"):
        assert from_disk.checks[name] == pytest.approx(direct[name], abs=1e-5), name
    assert from_disk.checks["curves"] == first.checks["curves"]  # the JSON round trip is exact
    other = cache.checks(recommender, cache.explain(recommender, top_items[1], user_id=user, n_steps=STEPS))
    assert other.source == "computed" and other.checks["score"] != first.checks["score"]
    assert cache.checks(recommender, found, random_draws=2).source == "computed"
    # The explanation's own entry is untouched by its deletion test's.
    assert ExplanationCache(tmp_path).explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "disk"


def test_a_damaged_deletion_test_entry_is_refused_and_computed_again(recommender, user, computed, tmp_path):
    ExplanationCache(tmp_path).checks(recommender, computed)
    path = ExplanationCache(tmp_path).entry_path(explanation_key(recommender, "faithfulness", (computed,), {}))
    data = json.loads(path.read_text())
    data["checks"]["deletion_top3_drop"] += 1.0
    path.write_text(json.dumps(data))
    again = ExplanationCache(tmp_path).checks(recommender, computed)
    assert again.source == "computed" and "checksum does not match its checks" in again.refused
    assert ExplanationCache(tmp_path).checks(recommender, computed).source == "disk"


def test_computations_wait_for_a_slot_and_the_same_key_is_computed_once(recommender, user, top_items, monkeypatch):
    """With one slot, four sessions asking for two explanations at once: never two computations together, and
    each explanation computed once (those who waited find it in memory)."""
    monkeypatch.setenv("WHYREC_COMPUTE_SLOTS", "1")
    running, most, calls = [0], [0], []
    lock = threading.Lock()
    real = CALLS["explain"]

    @functools.wraps(real)  # the key reads explain's signature
    def counted(*args, **kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
            calls.append(args[1])
        try:
            time.sleep(0.05)
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setitem(CALLS, "explain", counted)
    cache = ExplanationCache(None)
    found = {}
    threads = [threading.Thread(target=lambda i=i: found.__setitem__(i, cache.explain(
        recommender, top_items[i % 2], user_id=user, n_steps=STEPS))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and sorted(calls) == sorted(top_items[:2])
    assert sorted(f.source for f in found.values()) == ["computed", "computed", "memory", "memory"]


def test_compute_slots_default_to_one_fewer_than_the_cores_and_a_bad_setting_is_named(monkeypatch):
    monkeypatch.delenv("WHYREC_COMPUTE_SLOTS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert compute_slots() == 7
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    assert compute_slots() == 1
    monkeypatch.setenv("WHYREC_COMPUTE_SLOTS", "3")
    assert compute_slots() == 3
    for bad in ("0", "two"):
        monkeypatch.setenv("WHYREC_COMPUTE_SLOTS", bad)
        with pytest.raises(ExplanationError, match=f"WHYREC_COMPUTE_SLOTS is.*{bad}"):
            compute_slots()

def test_memory_then_disk_then_a_different_request_computed(recommender, user, top_items, computed, tmp_path):
    cache = ExplanationCache(tmp_path)
    first = cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    again = cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    from_disk = ExplanationCache(tmp_path).explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    assert (first.source, again.source, from_disk.source) == ("computed", "memory", "disk")
    assert_same_numbers(first.explanation, computed)
    assert from_disk.explanation == first.explanation  # the JSON round trip is exact
    assert from_disk.computed_seconds == pytest.approx(first.computed_seconds)
    assert "From the cache (on disk)" in from_disk.describe() and first.describe().startswith("Computed in")
    for changed in ({"n_steps": STEPS + 1}, {"query": "wool sock"}, {"drill_down": 1}, {"baseline": "pad"},
                    {"feature_overrides": {"item_popularity": an_override(recommender)}}):
        assert cache.explain(recommender, top_items[0], **{"user_id": user, "n_steps": STEPS, **changed}).source \
            == "computed", changed
    other_item = cache.explain(recommender, top_items[1], user_id=user, n_steps=STEPS)
    assert other_item.source == "computed" and other_item.explanation.item_id == top_items[1]


def test_a_pair_is_cached_apart_from_its_items_and_its_reverse(recommender, user, top_items, tmp_path):
    cache = ExplanationCache(tmp_path)
    a, b = top_items[:2]
    pair = cache.explain_pair(recommender, a, b, user_id=user, n_steps=STEPS)
    assert pair.source == "computed" and pair.explanation.is_pair
    assert cache.explain_pair(recommender, b, a, user_id=user, n_steps=STEPS).source == "computed"
    assert cache.explain(recommender, a, user_id=user, n_steps=STEPS).source == "computed"
    direct = explain_pair(recommender, a, b, user_id=user, n_steps=STEPS)
    assert ExplanationCache(tmp_path).explain_pair(recommender, a, b, user_id=user, n_steps=STEPS).explanation.score \
        == pytest.approx(direct.score, abs=1e-6)


def test_the_memory_cache_is_bounded(recommender, user, top_items):
    cache = ExplanationCache(None, memory_entries=2)
    for item in top_items:
        cache.explain(recommender, item, user_id=user, n_steps=STEPS)
    assert cache.explain(recommender, top_items[2], user_id=user, n_steps=STEPS).source == "memory"
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "computed"  # evicted


# ---- entries that must not be trusted -------------------------------------------------------------------------

def _truncate(text, _other):
    return text[: len(text) // 2]


def _change_a_value(text, _other):
    data = json.loads(text)
    data["explanation"]["score"] += 1.0  # still valid JSON and a valid explanation: only the checksum knows
    return json.dumps(data)


def _another_key(text, other):
    return other  # a whole, valid entry of another request copied over this one


def _another_schema(text, _other):
    return text.replace('"schema_version": 1', '"schema_version": 99', 1)


def _not_text(_text, _other):
    return b"\xff\xfe\x00garbage"


def _explanation_version_1(text, _other):
    data = json.loads(text)
    data["explanation"]["schema_version"] = 1
    from explain.cache import checksum

    data["checksum"] = checksum(data["explanation"])  # a consistent entry, in a schema this WhyRec cannot read
    return json.dumps(data)


@pytest.mark.parametrize("damage, why", [
    (_truncate, "not valid JSON"), (_change_a_value, "checksum"), (_another_key, "another key"),
    (_another_schema, "schema_version 99"), (_not_text, "unreadable"), (_explanation_version_1, "schema_version 1"),
])
def test_a_damaged_or_foreign_entry_is_refused_and_computed_again(recommender, user, top_items, computed, tmp_path,
                                                                  damage, why):
    ExplanationCache(tmp_path).explain(recommender, top_items[1], user_id=user, n_steps=STEPS)
    ExplanationCache(tmp_path).explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    ours = ExplanationCache(tmp_path).entry_path(key(recommender, top_items[0], user_id=user, n_steps=STEPS))
    theirs = ExplanationCache(tmp_path).entry_path(key(recommender, top_items[1], user_id=user, n_steps=STEPS))
    damaged = damage(ours.read_text(), theirs.read_text())
    (ours.write_bytes if isinstance(damaged, bytes) else ours.write_text)(damaged)

    cache = ExplanationCache(tmp_path)
    found = cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS)
    assert found.source == "computed" and why in found.refused and cache.stats["refused"] == 1
    assert found.explanation.item_id == top_items[0]
    assert found.explanation.score == pytest.approx(computed.score, abs=1e-6)
    assert "refused" in found.describe()
    # Written over with a whole entry: the next process reads it.
    assert ExplanationCache(tmp_path).explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "disk"


def test_read_entry_checks_the_key_field_by_field(recommender, user, top_items, computed):
    ours = key(recommender, top_items[0], user_id=user, n_steps=STEPS)
    text = entry_text(ours, Cached(computed, "computed", 1.0, 1.0, "2026-01-01T00:00:00Z"))
    assert read_entry(text, ours).explanation == computed
    other = json.loads(json.dumps(ours))
    other["model"]["checkpoint_id"] = "someone-else"
    with pytest.raises(ExplanationError, match=r"model\.checkpoint_id"):
        read_entry(text, other)


def test_an_unwritable_directory_leaves_the_memory_cache_working(recommender, user, top_items, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    cache = ExplanationCache(blocker / "cache")
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "computed"
    assert cache.explain(recommender, top_items[0], user_id=user, n_steps=STEPS).source == "memory"
    assert cache.stats["write_errors"] == 1


# ---- several processes at once -----------------------------------------------------------------------------------

def _writer(directory: str, shared: dict, own: dict, text: str, rounds: int) -> None:
    """Write the shared key's entry and this process's own, `rounds` times each, every time with other content."""
    cache = ExplanationCache(directory)
    explanation = Explanation.from_json(text)
    for round_ in range(rounds):
        for entry_key in (shared, own):
            cache._write(cache.entry_path(entry_key), entry_key,
                         Cached(explanation, "computed", 0.0, float(round_), f"2026-01-01T00:00:{round_ % 60:02d}Z"))


def _reader(directory: str, keys: list, rounds: int, outcomes) -> None:
    """Once the first entry is in place, read every key `rounds` times; report each refusal, then how many reads
    found a whole entry. (Waiting for it: spawned writers may start seconds after the readers on a busy machine.)"""
    cache = ExplanationCache(directory)
    deadline = time.monotonic() + 240
    while not cache.entry_path(keys[0]).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    whole = 0
    for _ in range(rounds):
        for entry_key in keys:
            found, refused = cache._read(cache.entry_path(entry_key), entry_key)
            if refused is not None:
                outcomes.put(("refused", refused))
            whole += found is not None
    outcomes.put(("whole", whole))


def test_concurrent_writers_never_leave_a_torn_entry(recommender, user, top_items, computed, tmp_path):
    """Four processes write one shared key and one key each over and over, two more read them all the while:
    every read finds a whole entry of its own key (or none yet), and every entry is whole at the end."""
    base = key(recommender, top_items[0], user_id=user, n_steps=STEPS)
    shared = base
    own = [{**base, "arguments": {**base["arguments"], "query": f"writer {i}"}} for i in range(4)]
    text = computed.to_json(indent=None)
    context = multiprocessing.get_context("spawn")
    outcomes = context.Queue()
    writers = [context.Process(target=_writer, args=(str(tmp_path), shared, own[i], text, 40)) for i in range(4)]
    readers = [context.Process(target=_reader, args=(str(tmp_path), [shared, *own], 120, outcomes))
               for _ in range(2)]
    for process in writers + readers:
        process.start()
    reports, finished = [], 0
    while finished < len(readers):  # drained before join: a process with a full queue would never end
        reports.append(outcomes.get(timeout=300))
        finished += reports[-1][0] == "whole"
    for process in writers + readers:
        process.join(timeout=300)
        assert process.exitcode == 0
    assert [why for kind, why in reports if kind == "refused"] == []
    assert sum(n for kind, n in reports if kind == "whole") > 0  # the readers did read entries while they were written
    cache = ExplanationCache(tmp_path)
    for entry_key in [shared, *own]:
        found, refused = cache._read(cache.entry_path(entry_key), entry_key)
        assert refused is None and found.explanation == computed
    assert not list(tmp_path.rglob("*.tmp"))  # every temporary file was moved into place


def test_a_plain_write_would_be_caught_torn(recommender, user, top_items, computed, tmp_path):
    """What the readers above look for: an entry cut short is refused, not read."""
    entry_key = key(recommender, top_items[0], user_id=user, n_steps=STEPS)
    text = entry_text(entry_key, Cached(computed, "computed", 0.0, 1.0, "2026-01-01T00:00:00Z"))
    for cut in (1, len(text) // 3, len(text) - 1):
        with pytest.raises(ExplanationError):
            read_entry(text[:cut], entry_key)


# ---- where the cache lives ---------------------------------------------------------------------------------------

def test_the_cache_directory_is_the_flag_then_the_environment_then_beside_the_model(tmp_path, monkeypatch):
    model = tmp_path / "runs" / "model"
    monkeypatch.delenv("WHYREC_CACHE", raising=False)
    assert cache_directory(model) == tmp_path.resolve() / "runs" / "explanation-cache"
    monkeypatch.setenv("WHYREC_CACHE", str(tmp_path / "shared"))
    assert cache_directory(model) == tmp_path / "shared"
    assert cache_directory(model, str(tmp_path / "flag")) == tmp_path / "flag"
    monkeypatch.setenv("WHYREC_CACHE", "off")
    assert cache_directory(model) is None
    assert cache_directory(model, "elsewhere") == Path("elsewhere")


# ---- precompute and reports ------------------------------------------------------------------------------------

def test_precompute_fills_the_cache_the_panel_reads(tiny_model, recommender, tmp_path, capsys):
    users = [u for u in recommender.user_ids if len(recommender.histories[u])][:2]
    listed = tmp_path / "users.txt"
    listed.write_text("# the demo's users\n" + "\n".join(users) + "\n\n")
    cache_dir = tmp_path / "cache"
    argv = ["precompute", "--model", str(tiny_model), "--users", str(listed), "--k", "2", "--steps", str(STEPS),
            "--checks", "1", "--cache", str(cache_dir), "--no-progress"]
    assert main(argv) == 0
    assert "4 explanations and 2 deletion tests for 2 users" in capsys.readouterr().out
    assert len(list(cache_dir.rglob("*.json"))) == 6
    cache = ExplanationCache(cache_dir)
    for user_id in users:
        for item in recommender.recommend(user_id=user_id, k=2):
            # As the Recommend page's panel asks for it (views.explanation_panel), with its defaults said out loud.
            found = cache.explain(recommender, item.item_id, user_id=user_id, query=None, n_steps=STEPS,
                                  drill_down=0)
            assert found.source == "disk" and found.explanation.item_id == item.item_id
            # The #1's deletion test, as the panel asks for it under the explanation; not the #2's.
            assert (cache.checks(recommender, found).source == "disk") == (item.rank == 1)
    assert main(argv) == 0  # a second run reads what the first wrote (and the #2's deletion tests computed above)
    assert "0 computed, 6 already cached" in capsys.readouterr().out


def test_precompute_a_sample_into_the_default_directory(tiny_model, recommender, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WHYREC_CACHE", str(tmp_path / "from-env"))
    assert main(["precompute", "--model", str(tiny_model), "--sample", "2", "--k", "1", "--steps", str(STEPS),
                 "--no-progress"]) == 0
    assert "2 explanations and 2 deletion tests for 2 users" in capsys.readouterr().out
    assert len(list((tmp_path / "from-env").rglob("*.json"))) == 4


@pytest.mark.parametrize("users, message", [
    (None, "no such file"), ("", "no user ids"), ("nobody-1\nnobody-2\n", "2 of 2 users are not in this data"),
    (b"\xff\xfe", "not UTF-8"), ("dir", "a directory"),
])
def test_precompute_bad_users_exit_2_with_one_line(tiny_model, tmp_path, capsys, users, message):
    listed = tmp_path / "users.txt"
    if users == "dir":
        listed.mkdir()
    elif isinstance(users, bytes):
        listed.write_bytes(users)
    elif users is not None:
        listed.write_text(users)
    code = main(["precompute", "--model", str(tiny_model), "--users", str(listed), "--cache", str(tmp_path / "c"),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(listed) in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "c").rglob("*.json"))


def test_precompute_with_the_cache_off_is_refused(tiny_model, tmp_path, capsys):
    (tmp_path / "u.txt").write_text("x\n")
    assert main(["precompute", "--model", str(tiny_model), "--users", str(tmp_path / "u.txt"), "--cache", "off"]) == 2
    assert "--cache" in capsys.readouterr().err


def test_a_report_reads_and_fills_the_cache(recommender, user, tmp_path):
    cache = ExplanationCache(tmp_path)
    first = build_report(recommender, user_id=user, k=2, n_steps=STEPS, cache=cache)
    again = build_report(recommender, user_id=user, k=2, n_steps=STEPS, cache=ExplanationCache(tmp_path))
    assert first.provenance["explanations_from_cache"] == 0 and again.provenance["explanations_from_cache"] == 2
    assert [i.explanation for i in again.items] == [i.explanation for i in first.items]
    plain = build_report(recommender, user_id=user, k=2, n_steps=STEPS)
    assert plain.provenance["explanations_from_cache"] == 0
    assert [i.explanation.score for i in plain.items] == pytest.approx([i.explanation.score for i in first.items])


def test_the_item_cli_says_where_its_explanation_came_from(tiny_model, user, top_items, tmp_path, capsys):
    argv = ["item", "--model", str(tiny_model), "--user", user, "--item", top_items[0], "--steps", str(STEPS),
            "--cache", str(tmp_path)]
    assert main(argv) == 0 and "Computed in" in capsys.readouterr().out
    assert main(argv) == 0 and "From the cache (on disk)" in capsys.readouterr().out

