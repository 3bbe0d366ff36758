"""Scenario adapters over a shared backbone, updates with lineage, and evaluation on a time window."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from data.io import write_tables
from data.schema import make_dataset
from model import scenarios
from model.checkpoint import CONFIG, ENCODER, WEIGHTS, load
from model.errors import CheckpointError, ModelError
from model.evaluate import evaluate_model
from model.sequences import build_histories, training_tensors
from model.train import TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
QUIET = {"progress": False, "log": lambda *_: None}
SHORT = TrainConfig(epochs=2, batch_size=16, behaviour_epochs=2)


def part_of(dataset, keep_items=None, before=None, source="part"):
    """The shop cut to some items (a scenario) or to the events before a moment (data that ends early)."""
    items, events = dataset.items, dataset.events
    if keep_items is not None:
        items = items[items["item_id"].isin(keep_items)].reset_index(drop=True)
        events = events[events["item_id"].isin(keep_items)]
    if before is not None:
        events = events[events["timestamp"] < before]
    return make_dataset(items, events.reset_index(drop=True), source=source, format="contract")


@pytest.fixture(scope="module")
def scenario_shop(tiny_shop):
    """The tiny shop's items of its three largest categories: a scenario with another catalog than the backbone's."""
    top = tiny_shop.items["category"].value_counts().index[:3]
    return part_of(tiny_shop, keep_items=tiny_shop.items.loc[tiny_shop.items["category"].isin(top), "item_id"])


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model, scenario_shop):
    out = tmp_path_factory.mktemp("scenario") / "adapter"
    metrics = train(scenario_shop, out, train_config=SHORT, backbone=tiny_model, scenario="top three", **QUIET)
    return out, metrics


def test_an_adapter_keeps_only_its_own_part_and_names_its_backbone(adapter, tiny_model):
    out, metrics = adapter
    config = json.loads((out / CONFIG).read_text())
    backbone = json.loads((tiny_model / CONFIG).read_text())
    assert config["backbone"]["checkpoint_id"] == backbone["checkpoint_id"]
    assert config["backbone"]["weights_sha256"] == scenarios.weights_checksum(backbone)
    assert config["backbone"]["scenario"] == "top three"
    assert not (out / ENCODER).exists()  # the backbone's encoder is read from the backbone
    stored = load_file(out / WEIGHTS)
    assert any("lora_A" in k for k in stored) and any("lora_B" in k for k in stored)
    assert not any("self_attn" in k or k.startswith(("position.", "event_type.")) for k in stored)
    full = sum(v.numel() for v in load_file(tiny_model / WEIGHTS).values())
    assert 0 < metrics["trainable_parameters"] < full
    assert sum(v.numel() for v in stored.values()) < full


def test_a_loaded_adapter_is_a_plain_recommender_that_scores_as_it_was_trained(adapter, scenario_shop, tiny_model):
    out, metrics = adapter
    recommender = load(out)
    assert not scenarios.has_adapter(recommender.net)  # merged: explainers see an ordinary network
    assert len(recommender.item_ids) == len(scenario_shop.items)
    # The validation score training saved comes back from the loaded adapter: the merge is the function trained.
    valid = evaluate_model(recommender, stage="valid")["models"]["model"]
    assert valid["NDCG@10"] == pytest.approx(metrics["valid"]["NDCG@10"], abs=1e-6)
    backbone = load(tiny_model)
    # The attention is shared as it was; the adapted feed-forward layers are not.
    for name in ("blocks.layers.0.self_attn.in_proj_weight", "position.weight"):
        assert torch.equal(recommender.net.get_parameter(name), backbone.net.get_parameter(name))
    assert not torch.allclose(recommender.net.blocks.layers[0].linear1.weight, backbone.net.blocks.layers[0].linear1.weight)
    user = next(u for u in recommender.user_ids if len(recommender.histories[u]) >= 3)
    ranked = recommender.recommend(user_id=user, k=5)
    assert {r.item_id for r in ranked} <= set(scenario_shop.items["item_id"])


def test_evaluation_while_training_reads_the_adapter():
    """The transformer's fast path reads linear1's weight directly: merged, the adapter counts; unmerged, not."""
    from model.recommender import RecommenderConfig, RecommenderNet

    torch.manual_seed(0)
    net = RecommenderNet(RecommenderConfig(n_items=5, n_features=3, text_dim=8, dim=8), encoder=torch.nn.Identity())
    net.eval()
    history = torch.randn(2, 4, 8)
    codes = torch.ones(2, 4, dtype=torch.long)
    with torch.no_grad():
        plain = net.user_states(history, codes, codes, codes)
    scenarios.add_adapter(net, rank=2)
    for name, parameter in net.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(parameter)
    scenarios.set_merged(net, True)
    with torch.no_grad():
        merged = net.user_states(history, codes, codes, codes)
    assert not torch.allclose(plain, merged)
    scenarios.set_merged(net, False)
    with torch.no_grad():
        assert torch.allclose(net.user_states(history, codes, codes, codes), plain, atol=1e-6)


def test_another_backbone_is_refused_with_one_clear_error(adapter, tmp_path, tiny_shop, tiny_encoder):
    out, _ = adapter
    other = tmp_path / "other"
    train(tiny_shop, other, model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16},
          train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1, seed=1), base_model=str(tiny_encoder),
          **QUIET)
    with pytest.raises(CheckpointError, match=r"is an adapter for backbone .* but .* is backbone"):
        load(out, backbone=other)
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    config = json.loads((moved / CONFIG).read_text())
    config["backbone"]["path"] = str(tmp_path / "gone")
    (moved / CONFIG).write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="is not at"):
        load(moved, check=False)
    with pytest.raises(CheckpointError, match="is a scenario adapter; a backbone must be a full checkpoint"):
        train(tiny_shop, tmp_path / "nested", train_config=SHORT, backbone=out, **QUIET)


def test_a_backbone_whose_weights_changed_is_refused(adapter, tiny_model, tmp_path):
    out, _ = adapter
    copy = tmp_path / "backbone"
    shutil.copytree(tiny_model, copy)
    weights = load_file(copy / WEIGHTS)
    weights["norm.weight"] = weights["norm.weight"] + 1
    from safetensors.torch import save_file

    save_file(weights, copy / WEIGHTS)
    config = json.loads((copy / CONFIG).read_text())
    config["files"][WEIGHTS] = __import__("model.checkpoint", fromlist=["_sha256"])._sha256(copy / WEIGHTS)
    (copy / CONFIG).write_text(json.dumps(config))  # same checkpoint id, other weights
    with pytest.raises(CheckpointError, match="is an adapter for backbone"):
        load(out, backbone=copy)


def test_targets_before_the_update_moment_are_history_only(tiny_shop):
    histories = build_histories(tiny_shop.events, tiny_shop.item_position)
    history = next(h for h in histories.values() if len(h) >= 6)
    since = int(history.first_touch[3])
    everything = training_tensors([history], 50)["targets"]
    recent = training_tensors([history], 50, since)["targets"]
    n = len(history) - 1
    kept = history.first_touch[1:] >= since
    assert torch.equal(recent[0, :n][torch.as_tensor(kept)], everything[0, :n][torch.as_tensor(kept)])
    assert (recent[0, :n][torch.as_tensor(~kept)] == -1).all() and (~kept).any() and kept.any()


@pytest.fixture(scope="module")
def stale(tmp_path_factory, tiny_shop, tiny_encoder):
    """A model of the tiny shop trained on its events before the last three weeks."""
    cut = tiny_shop.events["timestamp"].max() - pd.Timedelta(weeks=3)
    out = tmp_path_factory.mktemp("stale") / "model"
    train(part_of(tiny_shop, before=cut), out, model_overrides={"dim": 16, "max_item_tokens": 24,
                                                               "max_query_tokens": 16},
          train_config=SHORT, base_model=str(tiny_encoder), **QUIET)
    return out, cut


def test_an_update_starts_from_its_parent_and_records_it(stale, tiny_shop, tmp_path):
    parent, cut = stale
    out = tmp_path / "updated"
    metrics = train(tiny_shop, out, train_config=TrainConfig(epochs=1, batch_size=16, behaviour_epochs=1),
                    parent=parent, **QUIET)
    config = json.loads((out / CONFIG).read_text())
    parent_config = json.loads((parent / CONFIG).read_text())
    lineage = config["lineage"]
    assert lineage["parent"] == parent_config["checkpoint_id"] == lineage["ancestors"][0]
    assert lineage["generation"] == 1
    assert pd.Timestamp(lineage["since"]) < cut and pd.Timestamp(lineage["since"]) >= cut - pd.Timedelta(days=7)
    assert config["model"] == {**parent_config["model"]}
    assert metrics["checkpoint_id"] == config["checkpoint_id"]
    updated, before = load(out), load(parent)
    assert not torch.equal(updated.net.blocks.layers[0].linear1.weight, before.net.blocks.layers[0].linear1.weight)


def test_an_update_with_nothing_new_or_another_catalog_is_refused(stale, tiny_shop, tmp_path):
    parent, cut = stale
    with pytest.raises(ModelError, match="no new events"):
        train(part_of(tiny_shop, before=cut), tmp_path / "same", parent=parent, train_config=SHORT, **QUIET)
    fewer = part_of(tiny_shop, keep_items=tiny_shop.items["item_id"][:60])
    with pytest.raises(CheckpointError, match="keeps the parent's catalog"):
        train(fewer, tmp_path / "other", parent=parent, train_config=SHORT, **QUIET)


def test_evaluation_on_a_time_window(recommender):
    everything = evaluate_model(recommender)
    end = recommender.dataset.events["timestamp"].max()
    middle = recommender.dataset.events["timestamp"].quantile(0.9)
    late = evaluate_model(recommender, since=middle)
    early = evaluate_model(recommender, until=middle)
    assert late["users"] + early["users"] == everything["users"]
    assert 0 < late["users"] < everything["users"]
    assert late["window"]["since"] == pd.Timestamp(middle).isoformat() and late["window"]["until"] is None
    with pytest.raises(ModelError, match="is not a time"):
        evaluate_model(recommender, since="last tuesday")
    with pytest.raises(ModelError, match="falls in the window"):
        evaluate_model(recommender, since=end + pd.Timedelta(days=1))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_cli_trains_an_adapter_updates_and_evaluates_a_window(tiny_model, scenario_shop, stale, tiny_shop, tmp_path):
    write_tables(scenario_shop, tmp_path / "scenario")
    result = run_cli("train", "--data", str(tmp_path / "scenario"), "--out", str(tmp_path / "a"), "--epochs", "1",
                     "--base", str(tiny_model), "--scenario", "top three", "--behaviour-epochs", "1")
    assert result.returncode == 0, result.stderr
    assert "trainable parameters" in result.stdout
    refused = run_cli("train", "--data", str(tmp_path / "scenario"), "--out", str(tmp_path / "b"),
                      "--base", str(tiny_model), "--dim", "32")
    assert refused.returncode == 2 and "--dim" in refused.stderr and "Traceback" not in refused.stderr
    parent, cut = stale
    write_tables(tiny_shop, tmp_path / "shop")
    result = run_cli("update", "--model", str(parent), "--data", str(tmp_path / "shop"), "--out", str(tmp_path / "u"),
                     "--epochs", "1")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "u" / CONFIG).read_text())["lineage"]["parent"] == \
        json.loads((parent / CONFIG).read_text())["checkpoint_id"]
    report = tmp_path / "eval.json"
    result = run_cli("evaluate", "--model", str(tmp_path / "u"), "--since", str(cut.date()), "--json", str(report))
    assert result.returncode == 0, result.stderr
    assert json.loads(report.read_text())["window"]["since"].startswith(str(cut.date()))
    bad = run_cli("evaluate", "--model", str(tmp_path / "a"), "--base", str(parent))
    assert bad.returncode == 2 and "is an adapter for backbone" in bad.stderr and "Traceback" not in bad.stderr
    assert np.isfinite(json.loads(report.read_text())["summary"]["model"]["NDCG@10"])
