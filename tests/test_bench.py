"""The benchmark scripts run to the end on a tiny model, also where SHAP gives no second opinion."""

import json

import numpy as np


def test_explain_bench_reports_an_item_shap_could_not_compare(tiny_model, tmp_path, monkeypatch):
    import importlib

    from bench import explain as bench_explain

    faithfulness_module = importlib.import_module("explain.faithfulness")  # `explain.faithfulness` is the function

    def no_comparison(recommender, view, part, max_evals):  # as for a text its tokenizer does not give back
        return {"method": "shap_partition", "max_evals": max_evals, "ig_seconds": part.seconds, "spearman": None,
                "shap_values": [], "shap_base_value": None, "shap_completeness_gap": None, "seconds": 0.0,
                "deletion_top3_drop": None,
                "deletion_top3_words_drop": None, "aopc_comprehensiveness": None,
                "note": "the tokenizer does not give the model's tokens back"}

    monkeypatch.setattr(faithfulness_module, "agreement_with_shap", no_comparison)
    out = tmp_path / "explain.json"
    assert bench_explain.main(["--model", str(tiny_model), "--pairs", "2", "--full", "0", "--sweep", "0",
                               "--agreement", "2", "--fast-steps", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [a["shap_deletion_top3_drop"] for a in result["agreement"]] == [None, None]
    summary = result["summary"]
    assert summary["shap_deletion_top3_drop_median"] is None and summary["share_ig_fast_at_least_shap"] is None
    assert summary["shap_completeness_gap_abs_median"] is None
    assert summary["ig_deletion_top3_drop_median_same_items"] is not None and len(result["rows"]) == 2
    for unit in ("tokens", "words", "curve"):
        versus = summary["deletion_ig_fast_vs_shap"][unit]
        assert versus["items"] == 0 and versus["median_shap"] is None and versus["wilcoxon_p"] is None
        assert versus["median_ig_fast"] is None  # compared on the items SHAP could compare, and there are none
        assert summary["deletion_leave_one_out_vs_shap"][unit]["items"] == 0
    # The leave-one-out reference needs no SHAP: measured on every item all the same.
    assert all(a["loo_deletion_top3_drop"] is not None and a["loo_seconds"] > 0 for a in result["agreement"])
    assert all(a["loo_aopc_comprehensiveness"] is not None for a in result["agreement"])
    assert summary["leave_one_out_seconds_median"] > 0


def test_scale_serving_bench_compares_two_stage_with_exact_on_a_scaled_tiny_model(tiny_model, tmp_path):
    from bench import scale_serving

    out = tmp_path / "scale_serving.json"
    assert scale_serving.main(["--source", str(tiny_model), "--items", "400", "--users", "40", "--events", "800",
                               "--queries", "4", "--hnsw-max", "400", "--app-users", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    (ranking,) = result["ranking"]
    assert ranking["items"] == 400 and ranking["exact"]["queries"] == 4
    settings = ranking["two_stage"]
    assert any(name.startswith("hnsw") for name in settings) and len(settings) == 6
    assert all(0.0 <= s["recall_at_10"] <= 1.0 and s["p50_ms"] > 0 for s in settings.values())


def test_scale_bench_measures_every_step_of_a_small_shop_in_its_own_process(tmp_path):
    from bench import scale

    out = tmp_path / "scale.json"
    assert scale.main(["--users", "200", "--steps", "generate", "load", "quality", "features", "--root",
                       str(tmp_path / "shops"), "--out", str(out)]) == 0
    (size,) = json.loads(out.read_text())["sizes"]
    assert (size["users"], size["items"]) == (200, 20)
    steps = size["steps"]
    assert list(steps) == ["generate", "load", "quality", "features"]
    for step in steps.values():
        assert step["exit_code"] == 0 and step["peak_rss_gb"] > 0 and step["wall_seconds"] >= step["seconds"] > 0
    # The load step reads back what the generate step wrote.
    assert steps["load"]["events"] == steps["generate"]["events"] > 200 * 10
    assert "duplicate_events" in steps["quality"]["findings"] and steps["features"]["sample_rows"] > 0
    assert not (tmp_path / "shops" / "shop-200").exists()  # removed unless --keep


def test_scale_bench_model_steps_train_and_explain_on_a_scaled_tiny_model(tiny_model, tmp_path):
    from bench import scale

    out = tmp_path / "scale.json"
    assert scale.main(["--users", "200", "--steps", "checkpoint", "epoch", "explain", "--source", str(tiny_model),
                       "--root", str(tmp_path / "shops"), "--out", str(out)]) == 0
    (size,) = json.loads(out.read_text())["sizes"]
    steps = size["steps"]
    assert all(step["exit_code"] == 0 for step in steps.values())
    assert (steps["checkpoint"]["users"], steps["checkpoint"]["items"]) == (200, 100)
    assert steps["checkpoint"]["source"] == str(tiny_model)
    epoch = steps["epoch"]  # a small shop's epoch is timed whole
    assert epoch["projected"] is False and epoch["steps"] == epoch["epoch_steps"] > 0
    assert 0 < epoch["positions"] < epoch["training_events"] and np.isfinite(epoch["mean_loss"])
    explained = steps["explain"]
    assert len(explained["explain_s"]) == len(explained["faithfulness_s"]) == 3 and explained["n_steps"] == 50
    assert min(explained["explain_s"]) <= explained["explain_p50_s"] <= max(explained["explain_s"])
    assert not (tmp_path / "shops" / "shop-200-model").exists()  # removed with its shop unless --keep


def test_a_projected_epoch_scales_the_steps_taken_to_the_whole_epoch():
    from bench.scale import epoch_figures
    from model.train import Stage1Pass

    part = epoch_figures(Stage1Pass([1.0] * 10, positions=500, steps=10, epoch_steps=40, seconds=2.0), 8_000)
    assert part["projected"] is True and part["epoch_seconds"] == 8.0
    assert (part["events_per_s"], part["positions_per_s"], part["seconds_per_step"]) == (1_000.0, 250.0, 0.2)
    whole = epoch_figures(Stage1Pass([1.0] * 40, positions=2_000, steps=40, epoch_steps=40, seconds=8.0), 8_000)
    assert whole["projected"] is False and whole["epoch_seconds"] == 8.0 and whole["events_per_s"] == 1_000.0


def test_appended_sizes_keep_the_steps_not_measured_again():
    from bench.scale import merged_sizes

    earlier = [{"users": 10, "steps": {"generate": {"seconds": 1}, "load": {"seconds": 2}}},
               {"users": 100, "steps": {"generate": {"seconds": 3}}}]
    measured = [{"users": 10, "steps": {"load": {"seconds": 5}, "epoch": {"seconds": 6}}},
                {"users": 1_000, "steps": {"generate": {"seconds": 7}}}]
    merged = merged_sizes(earlier, measured)
    assert [size["users"] for size in merged] == [10, 100, 1_000]
    assert merged[0]["steps"] == {"generate": {"seconds": 1}, "load": {"seconds": 5}, "epoch": {"seconds": 6}}
    assert merged[1] == earlier[1] and merged[2] == measured[1]


def test_cache_bench_runs_to_the_end_and_finds_every_hit_equal_to_the_cold_explanation(tiny_model, tmp_path):
    from bench import realtime_cache

    out = tmp_path / "realtime_cache.json"
    assert realtime_cache.main(["--model", str(tiny_model), "--users", "2", "--steps", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["users"] == 2 and result["hits_equal_cold"] is True
    for measure in ("cold", "disk_hit", "memory_hit", "disk_hit_click_to_chart", "memory_hit_click_to_chart"):
        assert result[measure]["queries"] == 2 and result[measure]["p50_ms"] > 0


def test_realtime_bench_runs_and_compares_every_encoder(tiny_model, tmp_path):
    """bench.realtime end to end on the tiny model (as both models): every encoder measured, the verdict says which."""
    from bench import realtime

    out = tmp_path / "realtime.json"
    assert realtime.main(["--demo-model", str(tiny_model), "--amazon-model", str(tiny_model), "--queries", "6",
                          "--rounds", "1", "--users", "2", "--max-users", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    demo = result["models"]["demo"]
    encoders = (realtime.FLOAT, realtime.TORCH_INT8, realtime.ORT_INT8)
    assert set(demo["query_encoding"]) == set(encoders)
    assert demo["query_encoding"][realtime.FLOAT]["speedup_vs_float32"] == 1.0
    agreement = demo["catalog_encoding"]["agreement"]
    assert agreement["float32 re-encoded vs the checkpoint's embeddings"]["min"] > 0.9999
    assert agreement[realtime.ORT_INT8]["item_embeddings_cosine"]["min"] > 0.99
    for name in encoders[1:]:
        assert 0.0 <= demo["query_rankings"][name]["top10_overlap_mean"] <= 1.0
        assert demo["test_ndcg"][name]["users"] == demo["test_ndcg"][realtime.FLOAT]["users"] == 20
    assert demo["word_deletion"]["users"] == 2
    assert set(result["verdict"]) == set(encoders[1:])
    # The second model read the ONNX graph derived for the first (the same encoder): from the cache.
    assert "derive_cached_s" in result["models"]["amazon_scientific"]["derive"][realtime.ORT_INT8]
