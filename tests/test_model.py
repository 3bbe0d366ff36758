"""The recommender: contract, round trips, query mode and every bad request, on a tiny random encoder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.io import write_tables
from model.checkpoint import CONFIG, EVENTS, VECTORS, WEIGHTS, load
from model.errors import CheckpointError, EncoderError, ModelError
from model.recommender import RecommenderConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recommender(tiny_model):
    return load(tiny_model)


def some_user(recommender, min_items: int = 3) -> str:
    return next(u for u in recommender.user_ids if len(recommender.histories[u]) >= min_items)


def test_config_names_bad_values():
    with pytest.raises(ModelError, match=r"n_heads 3 must divide config\.dim 16"):
        RecommenderConfig(n_items=5, n_features=3, dim=16, n_heads=3)
    with pytest.raises(ModelError, match="unknown RecommenderConfig keys: colour"):
        RecommenderConfig.from_dict({"n_items": 5, "n_features": 3, "colour": "red"})
    with pytest.raises(ModelError, match="encoder_tuning 'half'"):
        RecommenderConfig(n_items=5, n_features=3, encoder_tuning="half")
    with pytest.raises(ModelError, match="behaviour_heads 0 must be at least 1"):
        RecommenderConfig(n_items=5, n_features=3, behaviour_heads=0)


def test_checkpoint_describes_itself(tiny_model):
    config = json.loads((tiny_model / CONFIG).read_text())
    assert config["format"] == "whyrec-checkpoint" and len(config["checkpoint_id"]) == 12
    assert config["model"]["dim"] == 16 and config["data"]["fingerprint"]
    assert (tiny_model / "metrics.json").exists() and (tiny_model / "encoder" / "model.safetensors").exists()
    # Stage 2 is cross-fitted: five heads, each checked on its own fold of the validation users.
    assert config["model"]["behaviour_heads"] == 5
    folds = json.loads((tiny_model / "metrics.json").read_text())["behaviour"]["folds"]
    assert len(folds) == 5 and all(f["fit"] > 0 and f["check"] > 0 for f in folds)
    assert not list(tiny_model.rglob("*.bin")) and not list(tiny_model.rglob("*.pt")) and not list(tiny_model.rglob("*.pkl"))


def test_recommend_ranks_unseen_items_best_first(recommender):
    user = some_user(recommender)
    ranked = recommender.recommend(user_id=user, k=10)
    assert [r.rank for r in ranked] == list(range(1, 11))
    scores = [r.score for r in ranked]
    assert scores == sorted(scores, reverse=True)
    seen = set(recommender.item_ids[recommender.histories[user].item_index])
    assert not seen & {r.item_id for r in ranked}
    assert ranked.mode == "user"
    for r in ranked:  # the parts add up to the score
        assert sum(r.parts.values()) == pytest.approx(r.score, abs=1e-5)


def test_exclude_seen_false_can_return_seen_items(recommender):
    user = some_user(recommender)
    everything = recommender.recommend(user_id=user, k=len(recommender.item_ids), exclude_seen=False)
    assert len(everything) == len(recommender.item_ids)


def test_score_matches_recommend(recommender):
    user = some_user(recommender)
    ranked = recommender.recommend(user_id=user, k=5)
    scores = recommender.score(user_id=user, item_ids=[r.item_id for r in ranked])
    np.testing.assert_allclose(scores, [r.score for r in ranked], rtol=1e-5, atol=1e-6)


def straightforward_top(recommender, k, *, user_id=None, query=None, exclude_seen=True) -> list[tuple[str, float]]:
    """Every item's score from its parts, sorted by score then catalog position in plain Python."""
    context = recommender.context(user_id, query)
    total = sum(recommender.score_parts(context).values())  # (N,) all items, part by part
    seen = set(context.history.item_index.tolist()) if exclude_seen else set()
    order = sorted((i for i in range(len(total)) if i not in seen), key=lambda i: (-total[i], i))
    return [(str(recommender.item_ids[i]), float(total[i])) for i in order[:k]]


@pytest.mark.parametrize("k", [1, 10, 40])
def test_the_whole_catalog_ranking_is_the_plain_sort_of_every_items_score(recommender, k):
    users = [u for u in recommender.user_ids if len(recommender.histories[u])][:6]
    asks = [{"user_id": u} for u in users] + [{"user_id": users[0], "query": "wool sock"}, {"query": "warm mug"},
                                              {"user_id": users[1], "exclude_seen": False}]
    for ask in asks:
        ranked = recommender.recommend(k=k, exact=True, **ask)
        expected = straightforward_top(recommender, k, **ask)
        assert [r.item_id for r in ranked] == [item for item, _ in expected], ask
        np.testing.assert_allclose([r.score for r in ranked], [score for _, score in expected], rtol=1e-6,
                                   atol=1e-6)
        for r in ranked:
            np.testing.assert_allclose(sum(r.parts.values()), r.score, rtol=1e-9, atol=1e-9)


def test_save_load_gives_identical_scores(tiny_model, tmp_path, recommender):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model, copy)
    again = load(copy)
    user = some_user(recommender)
    ids = list(recommender.item_ids[:20])
    np.testing.assert_array_equal(again.score(user_id=user, item_ids=ids), recommender.score(user_id=user, item_ids=ids))


def test_query_mode_with_and_without_user(recommender):
    alone = recommender.recommend(query="waterproof wool sock", k=5)
    assert alone.mode == "query" and len(alone) == 5
    user = some_user(recommender)
    personal = recommender.recommend(user_id=user, query="waterproof wool sock", k=5)
    assert personal.mode == "user+query"


def test_query_changes_the_ranking(recommender):
    a = recommender.score(query="red steel pan", item_ids=recommender.item_ids[:30])
    b = recommender.score(query="green cotton sock", item_ids=recommender.item_ids[:30])
    assert not np.allclose(a, b)


def test_long_query_is_truncated_and_flagged(recommender):
    ranked = recommender.recommend(query="wool " * 20_000, k=3)
    assert ranked.query_truncated and any("cut" in note for note in ranked.notes)


def test_user_without_history_falls_back_and_says_so(recommender):

    empty = recommender.dataset.events.iloc[:0]
    ranked = recommender.recommend(user_id=some_user(recommender), history=empty, k=5)
    assert ranked.mode == "popularity" and any("no history" in note for note in ranked.notes)
    assert len({r.item_id for r in ranked}) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"user_id": "nobody"}, "unknown user 'nobody'"),
        ({"query": "   "}, "query is empty"),
        ({}, "give a user, a query, or both"),
        ({"query": "mug", "k": 0}, "k must be a positive"),
        ({"query": "mug", "k": 10_000}, "larger than the catalog"),
    ],
)
def test_bad_requests_are_clear(recommender, kwargs, message):
    with pytest.raises(ModelError, match=message):
        recommender.recommend(**kwargs)


def test_unknown_user_suggests_near_ids(recommender):
    user = some_user(recommender)
    with pytest.raises(ModelError, match="nearest known: .*" + user):
        recommender.recommend(user_id=user + "x")


def test_unknown_item_ids_in_score(recommender):
    with pytest.raises(ModelError, match="unknown item id"):
        recommender.score(query="mug", item_ids=["no-such-item"])


def corrupt(path: Path, how: str) -> None:
    if how == "truncate":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    else:
        path.unlink()


@pytest.mark.parametrize(("name", "how"), [(WEIGHTS, "truncate"), (VECTORS, "flip"), (EVENTS, "delete"),
                                           ("encoder/model.safetensors", "truncate")])
def test_damaged_checkpoint_names_the_file(tiny_model, tmp_path, name, how):
    copy = tmp_path / "damaged"
    shutil.copytree(tiny_model, copy)
    corrupt(copy / name, how)
    with pytest.raises(CheckpointError, match=Path(name).name):
        load(copy)


def test_item_embeddings_of_another_width_are_refused(tiny_model, tmp_path):
    # A model with the lexical channel reads embeddings twice the encoder's width; a plain one, the encoder's.
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "wide"
    shutil.copytree(tiny_model, copy)
    vectors = load_file(copy / VECTORS)["text_embeddings"]
    save_file({"text_embeddings": torch.cat([vectors, vectors], 1).contiguous()}, copy / VECTORS)
    with pytest.raises(CheckpointError, match=rf"{VECTORS}: item text embeddings of width \({2 * vectors.shape[1]},\)"):
        load(copy, check=False)


def test_broken_config_and_missing_directory(tiny_model, tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load(tmp_path / "nowhere")
    copy = tmp_path / "broken"
    shutil.copytree(tiny_model, copy)
    (copy / CONFIG).write_text("{not json")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        load(copy)


def test_a_checkpoint_trained_on_other_behaviour_features_is_refused(tiny_model, tmp_path):
    from data.features import FEATURE_NAMES, FEATURES_VERSION

    config = json.loads((tiny_model / CONFIG).read_text())
    assert config["features"] == {"version": FEATURES_VERSION, "names": list(FEATURE_NAMES)}
    copy = tmp_path / "older"
    shutil.copytree(tiny_model, copy)
    del config["features"]  # written before the version was recorded: version 1
    (copy / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"features version 1; .* retrain it"):
        load(copy)
    config["features"] = {"version": FEATURES_VERSION, "names": list(reversed(FEATURE_NAMES))}
    (copy / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=rf"features version {FEATURES_VERSION}; "):
        load(copy)


def test_data_that_does_not_match_the_model(tiny_model, tmp_path):
    from data.synthetic import generate

    other = generate(n_users=30, n_items=50, seed=9, target_events=900)
    write_tables(other, tmp_path / "other")
    with pytest.raises(CheckpointError, match="does not match the checkpoint"):
        load(tiny_model, data=tmp_path / "other")


def test_encoder_errors_are_clear(tmp_path):
    from model.encoder import load_encoder, resolve_encoder

    with pytest.raises(EncoderError, match="does not exist"):
        resolve_encoder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match=r"no config\.json"):
        resolve_encoder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{}")
    with pytest.raises(EncoderError, match="cannot load the encoder"):
        load_encoder(tmp_path / "bad")


def test_training_is_resumable_and_keeps_the_best(tiny_shop, tiny_encoder, tmp_path):
    from model.train import STATE, TrainConfig, train

    out = tmp_path / "model"
    overrides = {"dim": 16, "max_item_tokens": 24}
    first = train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                  train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1), log=lambda *_: None)
    assert len(first["log"]) == 1 and not (out / STATE).exists()
    # An interrupted second run: the first run's checkpoint stays loadable.
    (out / STATE).write_text(json.dumps({"best": {"NDCG@10": first["log"][0]["valid_NDCG@10"], "epoch": 1},
                                         "log": first["log"]}))
    resumed = train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                    train_config=TrainConfig(epochs=2, batch_size=16, behaviour_epochs=1), resume=True,
                    log=lambda *_: None)
    assert [e["epoch"] for e in resumed["log"]] == [1, 2]
    assert load(out).recommend(query="mug", k=3)


def test_resume_with_nothing_to_resume_trains_from_the_start(tiny_shop, tiny_encoder, tmp_path):
    """`--resume` is safe to pass always (the Makefile does): no run, or a state whose checkpoint is gone."""
    from model.train import STATE, TrainConfig, train

    overrides = {"dim": 16, "max_item_tokens": 24}
    config = TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1)
    lines = []
    out = tmp_path / "model"
    fresh = train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                  train_config=config, resume=True, log=lines.append)
    assert any(line.startswith("nothing to resume in") for line in lines)
    assert [e["epoch"] for e in fresh["log"]] == [1] and fresh["stage"] == 2
    # A state left without its checkpoint's config.json (a build tool deleted it on Ctrl-C).
    (out / STATE).write_text(json.dumps({"best": {"NDCG@10": 0.5, "epoch": 3}, "log": fresh["log"] * 3}))
    (out / "config.json").unlink()
    lines.clear()
    again = train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                  train_config=config, resume=True, log=lines.append)
    assert any(line.startswith("cannot resume") for line in lines)
    assert [e["epoch"] for e in again["log"]] == [1]
    assert load(out).recommend(query="mug", k=3)


def test_a_run_stopped_in_stage_two_resumes_at_stage_two(tiny_shop, tiny_encoder, tmp_path, monkeypatch):
    """Interrupted after early stopping (in stage 2): the resumed run trains no more stage-1 epochs."""
    import model.train as training

    out = tmp_path / "model"
    overrides = {"dim": 16, "max_item_tokens": 24}
    first = training.train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                           train_config=training.TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1),
                           log=lambda *_: None)
    # Best at epoch 1, then two epochs without improvement: with patience 2, stage 1 was over.
    stopped = [{**first["log"][0], "epoch": epoch} for epoch in (1, 2, 3)]
    (out / training.STATE).write_text(json.dumps({"best": {"NDCG@10": 0.5, "epoch": 1}, "log": stopped}))
    stage2 = []
    real_fit = training.fit_behaviour_head
    monkeypatch.setattr(training, "fit_behaviour_head", lambda *a, **k: stage2.append(1) or real_fit(*a, **k))
    resumed = training.train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder),
                             progress=False, log=lambda *_: None, resume=True,
                             train_config=training.TrainConfig(epochs=10, patience=2, batch_size=16,
                                                               behaviour_epochs=1))
    assert [e["epoch"] for e in resumed["log"]] == [1, 2, 3] and resumed["best_epoch"] == 1
    assert stage2 == [1] and resumed["stage"] == 2 and not (out / training.STATE).exists()


def test_training_reports_its_progress(tiny_shop, tiny_encoder, tmp_path, monkeypatch):
    import os

    import model.train as training

    seen = []
    update = training.ProgressFile.update

    def recorded(self, **fields):
        update(self, **fields)
        seen.append((self.state["stage"], self.state["fraction"]))

    monkeypatch.setattr(training.ProgressFile, "update", recorded)
    path = tmp_path / "model.progress.json"
    training.train(tiny_shop, tmp_path / "model", model_overrides={"dim": 16, "max_item_tokens": 24},
                   base_model=str(tiny_encoder), progress=False, log=lambda *_: None, progress_file=path,
                   train_config=training.TrainConfig(epochs=2, batch_size=16, behaviour_epochs=1))
    final = json.loads(path.read_text())
    assert final["stage"] == "done" and final["fraction"] == 1.0 and final["pid"] == os.getpid()
    stages, fractions = [stage for stage, _ in seen], [fraction for _, fraction in seen]
    assert stages[0] == "preparing" and stages.index("stage 1") < stages.index("stage 2")
    assert fractions == sorted(fractions) and 0 < fractions[stages.index("stage 2")] < 1
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("after", [0.0, 1e9], ids=["after-the-first-epoch", "at-the-end-of-stage-1"])
def test_training_copies_out_a_stage1_preview_once(tiny_shop, tiny_encoder, tmp_path, after):
    from model.checkpoint import load, read_config
    from model.train import STATE, TrainConfig, train

    lines, path = [], tmp_path / "model.progress.json"
    train(tiny_shop, tmp_path / "model", model_overrides={"dim": 16, "max_item_tokens": 24},
          base_model=str(tiny_encoder), progress=False, log=lines.append, progress_file=path,
          train_config=TrainConfig(epochs=3, patience=5, batch_size=16, behaviour_epochs=1),
          preview=tmp_path / "preview", preview_after_s=after)
    previews = [line for line in lines if line.startswith("preview:")]
    expected_epoch = 1 if after == 0.0 else json.loads(path.read_text())["preview_epoch"]
    assert previews == [f"preview: the stage-1 checkpoint of epoch {expected_epoch} copied to {tmp_path / 'preview'}"]
    config = read_config(tmp_path / "preview")
    assert config["metrics"]["stage"] == 1 and not (tmp_path / "preview" / STATE).exists()
    assert json.loads(path.read_text())["preview"] == str(tmp_path / "preview")
    served = load(tmp_path / "preview")  # a whole checkpoint, its files checked; its behaviour heads add nothing
    user = next(u for u in served.user_ids if len(served.histories[u]) >= 3)
    top = served.recommend(user_id=user, k=5)
    assert len(top) == 5 and all(abs(r.parts["behaviour"]) < 1e-6 for r in top)


def test_interrupt_keeps_the_last_good_checkpoint(tiny_shop, tiny_encoder, tmp_path, monkeypatch):
    import model.train as training

    out = tmp_path / "model"
    real_loss = training._stage1_loss
    calls = {"n": 0}

    def loss_then_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # during the second epoch
            training._Interrupt.active.requested = True
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(training, "_stage1_loss", loss_then_interrupt)
    result = training.train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24},
                            base_model=str(tiny_encoder), progress=False, log=lambda *_: None,
                            train_config=training.TrainConfig(epochs=5, batch_size=16))
    assert result["interrupted"]
    assert load(out).recommend(query="mug", k=3)  # the epoch-1 checkpoint is whole


def test_a_tuned_encoder_goes_back_to_its_best_epoch(tiny_shop, tiny_encoder, tmp_path, monkeypatch):
    """With LoRA, epoch 1 validates best (by a stand-in for the ranking metric) and training runs on; stage 2
    and the checkpoint must then use epoch 1's encoder and its embeddings, not the last epoch's."""
    import model.train as training

    seen = []

    def evaluate_by_call(scorer, recommender, targets, **kwargs):
        lora = {n: p.detach().clone() for n, p in recommender.net.encoder.named_parameters() if p.requires_grad}
        seen.append((lora, recommender.text_embeddings.clone()))
        return {"NDCG@10": 0.5 if len(seen) == 1 else 0.1, "HR@10": 0.5}

    monkeypatch.setattr(training, "evaluate_scorer", evaluate_by_call)
    out = tmp_path / "lora"
    training.train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "encoder_tuning": "lora"},
                   base_model=str(tiny_encoder), progress=False, log=lambda *_: None,
                   train_config=training.TrainConfig(epochs=4, patience=2, batch_size=16, encoder_lr=1e-2))
    after_epoch_one, last_epoch, after_stage_one = seen[0], seen[2], seen[3]
    assert any(not torch.equal(after_epoch_one[0][n], last_epoch[0][n]) for n in last_epoch[0])  # it did move
    for name, value in after_epoch_one[0].items():
        assert torch.equal(after_stage_one[0][name], value), name
    torch.testing.assert_close(after_stage_one[1], after_epoch_one[1])
    saved = load(out)
    torch.testing.assert_close(saved.text_embeddings.cpu(), after_epoch_one[1].cpu())


def test_a_resumed_tuned_run_keeps_what_its_encoder_learned(tiny_shop, tiny_encoder, tmp_path, monkeypatch):
    """A LoRA run resumed after epoch 1, whose epoch 2 validates worse, ships epoch 1's encoder and embeddings,
    not the base encoder's nor epoch 2's."""
    import model.train as training

    out = tmp_path / "lora"
    overrides = {"dim": 16, "max_item_tokens": 24, "encoder_tuning": "lora"}
    config = {"batch_size": 16, "behaviour_epochs": 1, "encoder_lr": 1e-2}
    first = training.train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder), progress=False,
                           log=lambda *_: None, train_config=training.TrainConfig(epochs=1, **config))
    epoch_one = load(out).text_embeddings.cpu()
    for path in (tmp_path / ".lora.cache").glob("queries-*"):
        path.unlink()  # a cache that lost an entry must not get it back from the tuned encoder
    cache = {path.name: path.read_bytes() for path in (tmp_path / ".lora.cache").iterdir()}
    (out / training.STATE).write_text(json.dumps({"best": {"NDCG@10": 0.5, "epoch": 1}, "log": first["log"]}))
    monkeypatch.setattr(training, "evaluate_scorer", lambda *args, **kwargs: {"NDCG@10": 0.1, "HR@10": 0.1})
    resumed = training.train(tiny_shop, out, model_overrides=overrides, base_model=str(tiny_encoder),
                             progress=False, log=lambda *_: None, resume=True,
                             train_config=training.TrainConfig(epochs=2, **config))
    assert [e["epoch"] for e in resumed["log"]] == [1, 2]
    base = training.TextEncoder(*training.load_encoder(tiny_encoder)).embed(training.item_texts(tiny_shop), 24)
    assert not torch.allclose(epoch_one, base, atol=1e-4)  # epoch 1 did tune the encoder
    torch.testing.assert_close(load(out).text_embeddings.cpu(), epoch_one, atol=1e-5, rtol=1e-4)
    # The base encoder's cached embeddings are neither used nor overwritten by the tuned one's.
    assert {path.name: path.read_bytes() for path in (tmp_path / ".lora.cache").iterdir()} == cache


def test_real_encoder_loss_falls_with_lora(tiny_shop):
    """The real all-MiniLM-L6-v2, tuned with LoRA for a few steps on one batch: the loss must fall."""
    from data.features import FEATURES
    from model.encoder import TextEncoder, load_encoder
    from model.recommender import RecommenderNet
    from model.sequences import build_histories
    from model.train import TrainConfig, _stage1_loss, _tuned, item_texts, stage1_optimizer

    torch.manual_seed(0)
    transformer, tokenizer = load_encoder()
    config = RecommenderConfig(n_items=len(tiny_shop.items), n_features=len(FEATURES), dim=32,
                               encoder_tuning="lora", max_item_tokens=24, max_query_tokens=12)
    encoder = _tuned(TextEncoder(transformer, tokenizer), config)
    net = RecommenderNet(config, encoder)
    texts = item_texts(tiny_shop)
    text = encoder.embed(texts, 24)
    queries = encoder.embed(["wool sock"] * len(texts), 12)
    batch = [h for h in build_histories(tiny_shop.events, tiny_shop.item_position).values() if len(h) >= 2][:8]
    train_config = TrainConfig(lr=5e-3, encoder_lr=1e-3)
    optimizer = stage1_optimizer(net, train_config)
    rng = np.random.default_rng(0)
    net.train()
    losses = []
    for _ in range(6):
        loss = _stage1_loss(net, batch, text, queries, texts, train_config, torch.device("cpu"), rng)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    lora = [n for n, p in net.encoder.named_parameters() if p.requires_grad]
    assert lora and all("lora" in n for n in lora)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_recommend_and_bad_input(tiny_model, tmp_path):
    user = some_user(load(tiny_model))
    result = run_cli("recommend", "--model", str(tiny_model), "--user", user, "--k", "3")
    assert result.returncode == 0, result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 3
    bad = run_cli("recommend", "--model", str(tiny_model), "--user", "nobody")
    assert bad.returncode == 2 and "unknown user 'nobody'" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "m"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def cli_trained(tiny_shop, tiny_encoder, tmp_path, *options):
    """The tiny shop trained for one epoch by `python -m model train` with `options`, loaded."""
    write_tables(tiny_shop, tmp_path / "shop")
    result = run_cli("train", "--data", str(tmp_path / "shop"), "--out", str(tmp_path / "m"), "--epochs", "1",
                     "--base-model", str(tiny_encoder), "--dim", "16", *options)
    assert result.returncode == 0, result.stderr
    return load(tmp_path / "m")


def test_cli_trains_without_the_id_memory(tiny_encoder, tiny_shop, tmp_path):
    recommender = cli_trained(tiny_shop, tiny_encoder, tmp_path, "--no-id-embedding")
    assert recommender.config.use_id_embedding is False
    # No item has an ID vector: its score is text, history and behaviour (and a bias) only.
    assert not recommender.item_id_vectors.any()


def test_cli_trains_with_the_lexical_channel(tiny_encoder, tiny_shop, tmp_path):
    from model.encoder import TextEncoder, load_encoder
    from model.train import item_texts

    recommender = cli_trained(tiny_shop, tiny_encoder, tmp_path, "--lexical-text")
    assert recommender.config.lexical_text is True
    # Each item's text embedding is the encoder's, then the mean of its input word embeddings.
    hidden = recommender.config.text_dim
    assert recommender.text_embeddings.shape == (len(recommender.item_ids), 2 * hidden)
    encoder = TextEncoder(*load_encoder(tiny_encoder))
    batch = encoder.tokenize(item_texts(recommender.dataset)[:1], recommender.config.max_item_tokens)
    with torch.no_grad():
        words = encoder.word_embeddings(batch["input_ids"])[0, batch["attention_mask"][0].bool()]
        plain = encoder(batch["input_ids"], batch["attention_mask"])[0]
    np.testing.assert_allclose(recommender.text_embeddings[0, hidden:].numpy(), words.mean(0).numpy(), atol=1e-6)
    np.testing.assert_allclose(recommender.text_embeddings[0, :hidden].numpy(), plain.numpy(), atol=1e-6)
    # The lexical projection is part of the checkpoint: a reload scores the same.
    again = load(tmp_path / "m")
    user = some_user(recommender)
    ids = list(recommender.item_ids[:10])
    np.testing.assert_array_equal(again.score(user_id=user, item_ids=ids), recommender.score(user_id=user, item_ids=ids))
    assert "item_lexical_proj.weight" in dict(recommender.net.named_parameters())


def test_cli_passes_the_stopping_options_on(tiny_encoder, tiny_shop, tmp_path):
    recommender = cli_trained(tiny_shop, tiny_encoder, tmp_path, "--patience", "2", "--behaviour-epochs", "3")
    trained = recommender.metadata["train"]
    assert (trained["patience"], trained["behaviour_epochs"]) == (2, 3)
    bad = run_cli("train", "--data", str(tmp_path / "shop"), "--out", str(tmp_path / "m2"), "--patience", "0")
    assert bad.returncode == 2 and "--patience 0 must be at least 1" in bad.stderr


def test_public_entry_point(tiny_model):
    import model

    recommender = model.load(tiny_model)
    assert isinstance(recommender, model.Recommender)
    assert len(recommender.item_ids) == len(recommender.items)
    assert len(recommender.user_ids) == len(set(recommender.user_ids))


def test_stage_two_learns_returns_from_the_held_out_window_only():
    import pandas as pd

    from model.train import returning_views

    t = pd.Timestamp("2024-03-01", tz="UTC")
    day = pd.Timedelta(days=1)
    events = pd.DataFrame({
        "user_id": ["u1"] * 7 + ["u2"] * 2,
        "item_id": ["a", "b", "c", "a", "b", "d", "a", "x", "x"],
        "timestamp": [t, t + day, t + 2 * day, t + 3 * day, t + 4 * day, t + 5 * day, t + 6 * day, t, t + 3 * day],
        "event": ["view", "view", "view", "view", "cart", "view", "view", "view", "view"],
    })
    valid = pd.DataFrame({"user_id": ["u1"], "item_id": ["c"], "timestamp": [t + 2 * day]})
    test = pd.DataFrame({"user_id": ["u1"], "item_id": ["d"], "timestamp": [t + 5 * day]})
    returns = returning_views(events, valid, test)
    # u1's window is [day 2, day 5): the view of a again counts; the cart of b is no view; c is new there; the
    # view of a after the test moment and u2 (not a validation user) stay out.
    assert returns.to_dict("records") == [{"user_id": "u1", "item_id": "a", "timestamp": t + 3 * day}]


def test_the_behaviour_head_is_the_mean_of_its_heads():
    import copy

    from model.recommender import RecommenderNet, new_behaviour_head

    torch.manual_seed(0)
    net = RecommenderNet(RecommenderConfig(n_items=3, n_features=4, feature_hidden=5, behaviour_heads=3), None)
    heads = [new_behaviour_head(4, 5) for _ in range(3)]
    for head in heads:  # they start neutral; give each an output of its own
        torch.nn.init.normal_(head[-1].weight)
        torch.nn.init.normal_(head[-1].bias)
    net.set_behaviour_heads(heads)
    net.feature_mean.normal_()
    net.feature_std.uniform_(0.5, 2.0)
    x = torch.randn(7, 4, dtype=torch.float64)
    standard = (x - net.feature_mean.double()) / net.feature_std.double()
    expected = torch.stack([copy.deepcopy(h).double()(standard).squeeze(-1) for h in heads]).mean(0)
    # Exact up to the float32 rounding of the merged weights (the output layer divided by 3).
    torch.testing.assert_close(net.behaviour_score(x), expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(ModelError, match="2 behaviour heads given; the config has 3"):
        net.set_behaviour_heads(heads[:2])


@pytest.mark.parametrize("n_heads", [1, 5])
def test_stage_two_checks_each_head_on_users_it_was_not_fitted_on(n_heads):
    from model.train import cross_fit

    rng = np.random.default_rng(0)
    valid_users = np.array([f"u{i}" for i in range(103)])
    moment_users = np.concatenate([valid_users, rng.choice(valid_users, 60)])  # first touches, then returns
    first_touch = np.arange(len(moment_users)) < len(valid_users)
    plan = cross_fit(valid_users, moment_users, first_touch, n_heads, rng)
    assert len(plan) == n_heads
    for fit, check in plan:
        assert len(check) and first_touch[check].all()
        assert not set(moment_users[fit]) & set(moment_users[check])  # no head is checked on a user it saw
        assert len(fit) + np.isin(moment_users, moment_users[check]).sum() == len(moment_users)
    checked = np.concatenate([check for _, check in plan])
    if n_heads == 1:
        assert 20 <= len(checked) <= 45  # ~30% of 103
    else:  # every validation user checks exactly one head; the folds are as even as they can be
        assert sorted(checked) == list(range(len(valid_users)))
        assert max(len(c) for _, c in plan) - min(len(c) for _, c in plan) <= 1
        fitted = np.bincount(np.concatenate([fit for fit, _ in plan]), minlength=len(moment_users))
        assert (fitted == n_heads - 1).all()



def test_histories_are_built_per_user_on_demand_and_equal_the_batch_build(recommender):
    from model.sequences import build_histories

    batch = build_histories(recommender.dataset.events, recommender.dataset.item_position)
    lazy = recommender.histories
    assert len(lazy) == len(batch) and list(lazy) == sorted(batch)
    for user_id, expected in batch.items():
        got = lazy[user_id]
        for name in ("item_index", "event_codes", "first_touch", "last_touch"):
            np.testing.assert_array_equal(getattr(got, name), getattr(expected, name))
    assert "no-such-user" not in lazy and lazy.get("no-such-user") is None and 3 not in lazy
    with pytest.raises(KeyError):
        lazy["no-such-user"]


def test_a_stage1_epoch_capped_at_a_few_steps_takes_the_whole_epochs_first_steps(tiny_model):
    from data.split import leave_last_out
    from model.train import Stage1Objective, TrainConfig, stage1_epoch, stage1_optimizer, training_histories

    recommender = load(tiny_model, device="cpu")
    config = TrainConfig(batch_size=4)
    split = leave_last_out(recommender.dataset, min_history=config.min_history)
    histories = training_histories(split.train, recommender.dataset.item_position)
    text = recommender.text_embeddings

    def run(max_steps: int):
        torch.manual_seed(0)
        net = load(tiny_model, device="cpu").net.train()  # fresh weights each run
        done = stage1_epoch(net, Stage1Objective(net), stage1_optimizer(net, config), histories,
                            np.arange(len(histories)), 4, text, text, [], config, torch.device("cpu"),
                            np.random.default_rng(0), max_steps=max_steps)
        return net, done

    _, whole = run(0)
    net, part = run(2)
    assert whole.steps == whole.epoch_steps == -(-len(histories) // 4) > 2
    assert (part.steps, part.epoch_steps) == (2, whole.epoch_steps)
    assert part.positions == sum(min(len(h) - 1, net.config.max_history) for h in histories[:8])
    np.testing.assert_allclose(part.losses, whole.losses[:2])
    assert not torch.equal(net.item_text_proj.weight, recommender.net.item_text_proj.weight)  # it did learn
