"""On a CUDA device: serving and explanations give what the CPU gives (skipped on machines without one)."""

import numpy as np
import pytest
import torch

from explain import explain, explain_pair, faithfulness
from model.checkpoint import load

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def both(tiny_model):
    return load(tiny_model, device="cpu"), load(tiny_model, device="cuda")


def first_user_with_history(recommender) -> str:
    return next(u for u in recommender.user_ids if len(recommender.histories[u]) >= 3)


def test_ranking_on_cuda_matches_the_cpu(both):
    cpu, gpu = both
    assert gpu.device.type == "cuda" and next(gpu.net.parameters()).is_cuda
    user = first_user_with_history(cpu)
    on_cpu, on_gpu = cpu.recommend(user_id=user, k=10), gpu.recommend(user_id=user, k=10)
    np.testing.assert_allclose([r.score for r in on_gpu], [r.score for r in on_cpu], rtol=1e-4, atol=1e-5)
    assert gpu.recommend(query="wool sock", k=5)[0].item_id == cpu.recommend(query="wool sock", k=5)[0].item_id


def test_explanation_on_cuda_matches_the_cpu_and_adds_up(both):
    cpu, gpu = both
    user = first_user_with_history(cpu)
    item = cpu.recommend(user_id=user, k=3)[1].item_id
    on_cpu = explain(cpu, item, user_id=user, query="warm wool sock", n_steps=32)
    on_gpu = explain(gpu, item, user_id=user, query="warm wool sock", n_steps=32)
    assert on_gpu.score == pytest.approx(on_cpu.score, rel=1e-4, abs=1e-5)
    for kind in ("item_tokens", "query_tokens", "history", "collaborative", "behaviour", "history_tokens"):
        a, b = on_cpu.part(kind), on_gpu.part(kind)
        assert a.names == b.names, kind
        np.testing.assert_allclose(b.values, a.values, rtol=1e-3, atol=1e-4, err_msg=kind)
    total = on_gpu.base_value + sum(p.total for p in on_gpu.parts if p.in_total)
    assert total - on_gpu.completeness_gap == pytest.approx(on_gpu.score, rel=1e-4, abs=1e-5)


def test_pair_and_faithfulness_on_cuda(both):
    _, gpu = both
    user = first_user_with_history(gpu)
    top = gpu.recommend(user_id=user, k=2)
    pair = explain_pair(gpu, top[0].item_id, top[1].item_id, user_id=user, n_steps=16)
    assert pair.score == pytest.approx(top[0].score - top[1].score, rel=1e-4, abs=1e-5)
    measured = faithfulness(gpu, explain(gpu, top[0].item_id, user_id=user, n_steps=16), agreement=True)
    assert np.isfinite(measured["deletion_top3_drop"]) and measured["agreement"]["seconds"] > 0


def test_lora_training_on_cuda(tiny_shop, tiny_encoder, tmp_path):
    """A tuned encoder re-embeds the catalog every epoch on the GPU; the checkpoint loads and ranks."""
    from model.train import TrainConfig, train

    out = tmp_path / "lora"
    metrics = train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "encoder_tuning": "lora"},
                    base_model=str(tiny_encoder), progress=False, log=lambda *_: None,
                    train_config=TrainConfig(epochs=3, batch_size=16, device="cuda"))
    assert metrics["device"].startswith("cuda") and metrics["encoder_tuning"] == "lora"
    assert load(out, device="cuda").recommend(query="wool sock", k=3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (NCCL takes one per process)")
def test_torchrun_on_two_gpus_with_nccl(tiny_shop, tiny_encoder, tmp_path):
    """Two processes, one GPU each, NCCL, bf16 autocast and a large batch: the checkpoint loads and ranks."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from data.io import write_tables

    write_tables(tiny_shop, tmp_path / "shop")
    out = tmp_path / "model"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "model",
               "train", "--data", str(tmp_path / "shop"), "--out", str(out), "--base-model", str(tiny_encoder),
               "--dim", "16", "--epochs", "2", "--batch-size", "512", "--behaviour-epochs", "1", "--device", "cuda"]
    done = subprocess.run(command, cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                          timeout=600, env=os.environ.copy())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes (nccl)" in done.stdout
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["device"] == "cuda:0"
    assert load(out, device="cuda").recommend(query="wool sock", k=3)
