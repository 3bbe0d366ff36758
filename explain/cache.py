"""Explanations computed once: a cache keyed by checkpoint, context, item, edits and settings, in memory and on disk.

    cache = ExplanationCache("demo/explanation-cache")   # a directory, or None: this process's memory only
    found = cache.explain(recommender, item_id, user_id="u1", n_steps=50)      # any argument explain() takes
    found.explanation, found.source ("memory", "disk" or "computed"), found.seconds, found.describe()
    cache.explain_pair(recommender, item_a, item_b, user_id="u1")             # any argument explain_pair() takes
    cache.checks(recommender, found)      # its deletion test (explain.faithfulness), found.checks: kept the same way

The key is everything the explanation depends on: the checkpoint id, the data served (its fingerprint), the device,
the code that computes it (a hash of the data, model and explain packages' sources) and the package versions,
and every argument of the call (`explain` or `explain_pair`) with its defaults applied, read from the function's
own signature: a setting added to `explain` joins the key by itself. Edits key by content: an edited history by a
hash of its rows, feature overrides by their values. A deletion test (`checks`) keys by the checksum of the
explanation it tests (its timings left out) and faithfulness()'s own arguments. A model that is not a saved
checkpoint (one being trained, or built in memory) has no id to key by: its explanations are computed every time
and never stored.

Computing is the expensive part, and several sessions of one dashboard share this process's CPU: at most
`compute_slots()` computations run at once ($WHYREC_COMPUTE_SLOTS; by default one fewer than the CPU cores, at
least one), so the light work of the other sessions (a ranking, a page) always finds a core. A request that waits
for a slot looks in memory again before it computes: two sessions asking for the same explanation compute it once.

On disk an entry is one JSON file, DIR/<checkpoint id>/<2 hex>/<sha-256 of the key>.json:

    {"schema": "whyrec-explanation-cache", "schema_version": 1,
     "key": {...},                     # the whole key, compared on read: a hash that matches is not enough
     "checksum": "sha256:...",         # of the explanation below, as canonical JSON (sorted keys, no spaces)
     "computed_at": str, "seconds": float,   # when it was computed and how long that took
     "explanation": {...}}             # explain.base's JSON, schema_version 2 ("checks": {...} for a deletion test)

It is written to a temporary file beside its place and moved there with os.replace, so a reader sees the old entry
or the new one whole, never part of one, whichever of several processes writes it. A reader trusts an entry only if
it parses, names this schema, holds this very key and the checksum of its explanation, and that explanation loads;
anything else (a truncated or corrupted file, another key, another checkpoint, another schema) is refused, counted,
logged, computed again and written over. A directory that cannot be written leaves the memory cache working.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from explain.base import SCHEMA_VERSION as EXPLANATION_SCHEMA_VERSION
from explain.base import Explanation
from explain.errors import ExplanationError
from explain.explanations import explain, explain_pair
from explain.faithfulness import faithfulness

SCHEMA = "whyrec-explanation-cache"
SCHEMA_VERSION = 1
MEMORY_ENTRIES = 256  # explanations kept in this process: ~50-200 kB each as objects, a few tens of MB at most
CACHE_ENV = "WHYREC_CACHE"  # the app's disk cache: a directory, or "off" for this process's memory only
DEFAULT_NAME = "explanation-cache"  # without WHYREC_CACHE: this directory beside the model directory
OFF = ("off", "none", "no", "0")
SOURCES = ("memory", "disk", "computed")
CALLS = {"explain": explain, "explain_pair": explain_pair, "faithfulness": faithfulness}
SLOTS_ENV = "WHYREC_COMPUTE_SLOTS"  # computations at once in one process (see compute_slots)
_log = logging.getLogger(__name__)


def compute_slots() -> int:
    """How many explanations (or deletion tests) one process computes at once: $WHYREC_COMPUTE_SLOTS, else one
    fewer than the CPU cores, at least one. Each computation runs on the threads torch is given; more at once
    than cores only makes every one of them, and every page waiting behind them, slower."""
    given = os.environ.get(SLOTS_ENV, "").strip()
    if given:
        try:
            slots = int(given)
        except ValueError:
            raise ExplanationError(f"${SLOTS_ENV} is {given!r}: give a whole number of computations, 1 or more") \
                from None
        if slots < 1:
            raise ExplanationError(f"${SLOTS_ENV} is {slots}: give 1 or more")
        return slots
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class Cached:
    """An explanation (or its deletion test) and where it came from: this process's memory, the disk cache, or
    computed just now."""

    value: Explanation | dict  # the explanation; for ExplanationCache.checks, faithfulness()'s measures
    source: str  # one of SOURCES
    seconds: float  # this call's wall time: the computation, or finding the explanation in the cache
    computed_seconds: float  # how long computing it took, when it was computed
    computed_at: str  # ISO-8601 UTC, when it was computed
    refused: str | None = None  # why a disk entry was not trusted (it was computed again), if one was there

    @property
    def explanation(self) -> Explanation:
        return self.value

    @property
    def checks(self) -> dict:
        return self.value

    @property
    def from_cache(self) -> bool:
        return self.source != "computed"

    def describe(self) -> str:
        """One line for a person: where the explanation came from, and how long it took."""
        if self.from_cache:
            where = "in memory" if self.source == "memory" else "on disk"
            return (f"From the cache ({where}) in {_duration(self.seconds)}; computed in "
                    f"{_duration(self.computed_seconds)} at {self.computed_at.replace('T', ' ')}.")
        said = f"Computed in {_duration(self.seconds)}."
        return said + (f" (The cached copy was refused: {self.refused}.)" if self.refused else "")


@dataclass
class ExplanationCache:
    """Explanations by key, in a bounded LRU in this process and, given a directory, on disk for every process."""

    directory: Path | None = None  # None: memory only
    memory_entries: int = MEMORY_ENTRIES
    stats: dict = field(default_factory=lambda: dict.fromkeys((*SOURCES, "refused", "write_errors"), 0))

    def __post_init__(self) -> None:
        self.directory = None if self.directory is None else Path(self.directory)
        self._memory: OrderedDict[str, tuple[dict, Cached]] = OrderedDict()
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(compute_slots())

    def explain(self, recommender, item_id, **arguments) -> Cached:
        """`explain(recommender, item_id, **arguments)`, computed once per key."""
        return self._get(recommender, "explain", (str(item_id),), arguments)

    def explain_pair(self, recommender, item_a, item_b, **arguments) -> Cached:
        """`explain_pair(recommender, item_a, item_b, **arguments)`, computed once per key."""
        return self._get(recommender, "explain_pair", (str(item_a), str(item_b)), arguments)

    def checks(self, recommender, explained: Cached | Explanation, **arguments) -> Cached:
        """`faithfulness(recommender, explanation, **arguments)` (the deletion test), computed once per explanation
        (by its checksum) and arguments; the result's `.checks` is faithfulness()'s dict."""
        explanation = explained.explanation if isinstance(explained, Cached) else explained
        return self._get(recommender, "faithfulness", (explanation,), arguments)

    def contains(self, recommender, item_id, **arguments) -> bool:
        """Whether `explain(recommender, item_id, **arguments)` would come from the cache (a valid disk entry)."""
        key = explanation_key(recommender, "explain", (str(item_id),), arguments)
        if key is None:
            return False
        digest = key_digest(key)
        with self._lock:
            if digest in self._memory:
                return True
        return self.directory is not None and self._read(self.entry_path(key), key)[0] is not None

    # ---- lookup -------------------------------------------------------------------------------------------------

    def _get(self, recommender, call: str, items: tuple, arguments: dict) -> Cached:
        started = time.perf_counter()
        key = explanation_key(recommender, call, items, arguments)
        if key is None:  # not a saved checkpoint: nothing to key by
            self.stats["computed"] += 1
            with self._slots:
                return self._compute(recommender, call, items, arguments, started)
        digest = key_digest(key)
        found = self._in_memory(digest, key, started)
        if found is not None:
            return found
        refused = None
        if self.directory is not None:
            found, refused = self._read(self.entry_path(key), key)
            if found is not None:
                self.stats["disk"] += 1
                result = replace(found, seconds=time.perf_counter() - started, refused=None)
                self._remember(digest, key, result)
                return result
            if refused is not None:
                self.stats["refused"] += 1
                _log.warning("explanation cache: refused %s (%s); computing it again", self.entry_path(key), refused)
        with self._slots:  # waited for a slot: another session may have computed this very key meanwhile
            found = self._in_memory(digest, key, started)
            if found is not None:
                return found
            self.stats["computed"] += 1
            result = self._compute(recommender, call, items, arguments, started, refused)
        self._remember(digest, key, result)
        if self.directory is not None:
            self._write(self.entry_path(key), key, result)
        return result

    def _in_memory(self, digest: str, key: dict, started: float) -> Cached | None:
        with self._lock:
            held = self._memory.get(digest)
            if held is None or held[0] != key:
                return None
            self._memory.move_to_end(digest)
            self.stats["memory"] += 1
            return replace(held[1], source="memory", seconds=time.perf_counter() - started, refused=None)

    def _compute(self, recommender, call, items, arguments, started, refused=None) -> Cached:
        value = CALLS[call](recommender, *items, **arguments)
        seconds = time.perf_counter() - started
        return Cached(value, "computed", seconds, seconds, _now(), refused)

    def _remember(self, digest: str, key: dict, result: Cached) -> None:
        with self._lock:
            self._memory[digest] = (key, result)
            self._memory.move_to_end(digest)
            while len(self._memory) > max(0, self.memory_entries):
                self._memory.popitem(last=False)

    def clear_memory(self) -> None:
        with self._lock:
            self._memory.clear()

    # ---- disk ---------------------------------------------------------------------------------------------------

    def entry_path(self, key: dict) -> Path:
        digest = key_digest(key)
        checkpoint = str(key["model"]["checkpoint_id"])
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", checkpoint) or checkpoint.strip(".") == "":
            checkpoint = "id-" + hashlib.sha256(checkpoint.encode()).hexdigest()[:16]
        return self.directory / checkpoint / digest[:2] / f"{digest}.json"

    def _read(self, path: Path, key: dict) -> tuple[Cached | None, str | None]:
        """(the entry, None), (None, why it was refused), or (None, None) when there is none."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None, None
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"unreadable ({exc})"
        try:
            return read_entry(text, key), None
        except ExplanationError as exc:
            return None, str(exc)

    def _write(self, path: Path, key: dict, result: Cached) -> None:
        try:
            text = entry_text(key, result)
        except (TypeError, ValueError) as exc:  # a measure JSON cannot hold (not finite): kept in memory only
            _log.warning("explanation cache: not writing %s (%s)", path, exc)
            return
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
            temporary = Path(name)
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(temporary, 0o644)  # readable by the other processes that share the cache
            os.replace(temporary, path)
        except OSError as exc:
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            self._write_failed(path, exc)

    def _write_failed(self, path: Path, exc: OSError) -> None:
        self.stats["write_errors"] += 1
        if self.stats["write_errors"] == 1:  # once: the memory cache goes on working
            _log.warning("explanation cache: cannot write %s (%s); keeping explanations in memory only", path,
                         exc.strerror or exc)


# ---- entries --------------------------------------------------------------------------------------------------

def _value_field(key: dict) -> str:
    return "checks" if key.get("call") == "faithfulness" else "explanation"


def entry_text(key: dict, result: Cached) -> str:
    """The JSON file of one entry (see the module docstring); ValueError for a value JSON cannot hold."""
    value = result.value if isinstance(result.value, dict) else result.value.to_dict()
    return json.dumps({"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "key": key,
                       "checksum": checksum(value), "computed_at": result.computed_at,
                       "seconds": result.computed_seconds, _value_field(key): value},
                      allow_nan=False, ensure_ascii=False)


def read_entry(text: str, key: dict) -> Cached:
    """The entry in `text` if it is whole and holds `key`'s explanation; ExplanationError saying why not."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ExplanationError(f"not valid JSON, truncated or corrupted ({exc})") from exc
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise ExplanationError(f"not a {SCHEMA} entry")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise ExplanationError(f"cache schema_version {data.get('schema_version')!r}, this WhyRec reads "
                               f"{SCHEMA_VERSION}")
    if data.get("key") != key:
        raise ExplanationError("the entry holds another key: " + _first_difference(data.get("key"), key))
    name = _value_field(key)
    value = data.get(name)
    if data.get("checksum") != checksum(value):
        raise ExplanationError(f"its checksum does not match its {name}")
    if name == "checks":
        if not isinstance(value, dict) or not isinstance(value.get("deletion_top3_drop"), int | float):
            raise ExplanationError("its checks are not a deletion test's measures")
        loaded = value
    else:
        loaded = Explanation.from_dict(value)
    seconds, computed_at = data.get("seconds"), data.get("computed_at")
    if not isinstance(seconds, int | float) or not isinstance(computed_at, str):
        raise ExplanationError("it does not say when it was computed")
    return Cached(loaded, "disk", 0.0, float(seconds), computed_at)


def checksum(explanation) -> str:
    canonical = json.dumps(explanation, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ---- keys -----------------------------------------------------------------------------------------------------

def explanation_key(recommender, call: str, items: tuple, arguments: dict) -> dict | None:
    """Everything an explanation (or a deletion test: call "faithfulness", items the explanation) depends on, as
    plain JSON; None for a model that is not a saved checkpoint."""
    checkpoint_id = getattr(recommender, "checkpoint_id", None)
    if not checkpoint_id or (getattr(recommender, "metadata", None) or {}).get("checkpoint_id") != checkpoint_id:
        return None
    try:
        bound = inspect.signature(CALLS[call]).bind(recommender, *items, **arguments)
    except TypeError as exc:
        raise ExplanationError(f"{call}: {exc}") from exc
    bound.apply_defaults()
    called = {name: _key_value(name, value) for name, value in list(bound.arguments.items())[1:]}
    return {
        "call": call,
        "arguments": called,
        "model": {"checkpoint_id": str(checkpoint_id), "data_fingerprint": str(recommender.dataset.meta.fingerprint),
                  "device": str(getattr(recommender, "device", "cpu"))},
        "computed_by": {"explanation_schema_version": EXPLANATION_SCHEMA_VERSION, "code": code_fingerprint(),
                        "versions": _versions()},
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def _key_value(name: str, value):
    """An argument as plain JSON that is equal exactly when the explanation would be the same."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int | float):
        if isinstance(value, float) and not np.isfinite(value):
            return repr(value)
        return value
    if isinstance(value, pd.DataFrame):  # an edited history: keyed by its rows, in order
        rows = pd.util.hash_pandas_object(value, index=False).to_numpy()
        digest = hashlib.sha256(rows.tobytes())
        digest.update(json.dumps([[str(c), str(t)] for c, t in value.dtypes.items()]).encode())
        return {"frame_rows": len(value), "sha256": digest.hexdigest()}
    if isinstance(value, dict):  # feature overrides: {name: value}
        return {"mapping": sorted([str(k), _key_value(name, v)] for k, v in value.items())}
    if isinstance(value, pd.Timestamp | datetime | np.datetime64):
        moment = pd.Timestamp(value)
        moment = moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
        return {"moment": moment.isoformat()}
    if isinstance(value, list | tuple):
        return [_key_value(name, v) for v in value]
    if isinstance(value, Explanation):  # a deletion test's: keyed by what it tests, not how long that took
        content = value.to_dict()
        content.pop("timing", None)
        for part in content.get("parts", []):
            part.pop("seconds", None)
        return {"explanation": checksum(content)}
    raise ExplanationError(f"cannot key an explanation by {name}={type(value).__name__}: give plain values")


_code: str | None = None


def code_fingerprint() -> str:
    """A hash of the sources that compute an explanation (the data, model and explain packages): a change to any
    of them keys every explanation afresh, so no entry outlives the code that computed it."""
    global _code
    if _code is None:
        root = Path(__file__).resolve().parents[1]
        digest = hashlib.sha256()
        for package in ("data", "model", "explain"):
            for path in sorted((root / package).glob("*.py")):
                digest.update(f"{package}/{path.name}\0".encode())
                digest.update(path.read_bytes())
        _code = digest.hexdigest()[:16]
    return _code


_versions_found: dict | None = None


def _versions() -> dict:
    global _versions_found
    if _versions_found is None:
        from explain.report import versions

        _versions_found = versions()
    return _versions_found


# ---- where -----------------------------------------------------------------------------------------------------

def cache_directory(model_dir, given=None) -> Path | None:
    """The disk cache to use: `given` (a CLI's --cache), else $WHYREC_CACHE, else explanation-cache/ beside the
    model directory; None where the one chosen says "off" (memory only)."""
    chosen = given if given is not None else os.environ.get(CACHE_ENV, "").strip() or None
    if chosen is None:
        return Path(model_dir).resolve().parent / DEFAULT_NAME
    if str(chosen).strip().lower() in OFF:
        return None
    return Path(chosen)


# ---- helpers ---------------------------------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _first_difference(theirs, ours, where: str = "") -> str:
    if isinstance(theirs, dict) and isinstance(ours, dict):
        for name in sorted(set(theirs) | set(ours)):
            if theirs.get(name) != ours.get(name):
                return _first_difference(theirs.get(name), ours.get(name), f"{where}.{name}" if where else name)
    return f"{where or 'key'} is {json.dumps(theirs)[:80]}, expected {json.dumps(ours)[:80]}"
