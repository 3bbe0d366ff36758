"""Data-parallel training: two CPU processes (gloo) take the step one process takes, and only process 0 writes."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from data.io import write_tables
from model.checkpoint import WEIGHTS, load

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_in_process(rank: int, world: int, port: int, dataset, out: Path, encoder: Path, options: dict) -> None:
    """One of `world` processes, joined as torchrun would join it, running the same train() as the CLI."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from model import checkpoint, distributed
    from model.train import TrainConfig, train

    real_save, real_clip = checkpoint.save, torch.nn.utils.clip_grad_norm_

    def recorded_save(directory, *args, **kwargs):  # who writes checkpoints
        (out.parent / f"saved-by-{rank}").touch()
        return real_save(directory, *args, **kwargs)

    def recorded_clip(parameters, *args, **kwargs):  # the gradients of the first step, as DDP left them
        parameters = list(parameters)
        grads = out.parent / f"grads-{rank}.safetensors"
        if not grads.exists():
            names = {id(p): name for name, p in net_of_step[0].named_parameters()}
            save_file({names[id(p)]: p.grad.contiguous() for p in parameters if p.grad is not None}, grads)
        return real_clip(parameters, *args, **kwargs)

    net_of_step = []  # the network whose gradients the step takes (named for the record)
    real_wrap = distributed.wrap

    def recorded_wrap(module):
        net_of_step.append(module.net)
        return real_wrap(module)

    real_totals = distributed.totals

    def recorded_totals(values, device):  # each process's positions in the first step
        first = out.parent / f"positions-{rank}"
        if not first.exists():
            first.write_text(str(values[1]))
        return real_totals(values, device)

    checkpoint.save, torch.nn.utils.clip_grad_norm_ = recorded_save, recorded_clip
    distributed.wrap, distributed.totals = recorded_wrap, recorded_totals
    with distributed.process_group(torch.device("cpu")):
        metrics = train(dataset, out, model_overrides=options["model"], base_model=str(encoder), progress=False,
                        train_config=TrainConfig(**options["train"]), progress_file=out.parent / "progress.json",
                        log=lambda *_: None)
    (out.parent / f"metrics-{rank}.json").write_text(json.dumps(metrics, default=str))


def train_with(world: int, dataset, out: Path, encoder: Path, **options) -> dict:
    """Train in `world` processes (1: in a spawned process too, so both runs start alike); process 0's metrics."""
    out.parent.mkdir(parents=True, exist_ok=True)
    mp.spawn(train_in_process, args=(world, free_port(), dataset, out, encoder, options), nprocs=world)
    return json.loads((out.parent / "metrics-0.json").read_text())


def stage1_weights(out: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's stage-1 weights (stage 2 then fits the behaviour head and its feature scaling)."""
    return {k: v for k, v in load_file(out / WEIGHTS).items() if not k.startswith(("behaviour", "feature_"))}


@pytest.mark.slow  # four processes start, one after another pair
def test_two_processes_take_the_step_one_process_takes(tiny_shop, tiny_encoder, tmp_path):
    """One step over the whole batch of users: each process takes half of it and DDP averages the gradients,
    weighted so that the step is the one-process step. Without dropout or pseudo-query draws, which differ by
    process, the weights after it agree to float rounding."""
    options = {"model": {**OVERRIDES, "dropout": 0.0},
               "train": {"epochs": 1, "batch_size": len(tiny_shop.user_ids), "query_weight": 0.0,
                         "behaviour_epochs": 1}}
    one = train_with(1, tiny_shop, tmp_path / "one" / "model", tiny_encoder, **options)
    two = train_with(2, tiny_shop, tmp_path / "two" / "model", tiny_encoder, **options)
    assert one["processes"] == 1 and two["processes"] == 2
    assert one["log"][0]["positions"] == two["log"][0]["positions"] > 0
    assert two["log"][0]["loss"] == pytest.approx(one["log"][0]["loss"], rel=1e-5)
    # The gradients DDP averaged, weighted by each process's share of the positions, are the whole batch's. The two
    # halves hold different numbers of positions, so a plain average of their mean losses' gradients would not be.
    halves = [int(float((tmp_path / "two" / f"positions-{rank}").read_text())) for rank in (0, 1)]
    assert sum(halves) == one["log"][0]["positions"] and halves[0] != halves[1]
    grads_one, grads_two = (load_file(tmp_path / "one" / "grads-0.safetensors"),
                            load_file(tmp_path / "two" / "grads-0.safetensors"))
    assert grads_one.keys() == grads_two.keys() and len(grads_one) > 5
    assert all(g.abs().sum() > 0 for name, g in grads_one.items() if name.startswith("item_text_proj"))
    for name, grad in grads_one.items():
        torch.testing.assert_close(grads_two[name], grad, rtol=1e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(load_file(tmp_path / "two" / "grads-1.safetensors"), grads_two, rtol=0, atol=0)
    after_one, after_two = stage1_weights(tmp_path / "one" / "model"), stage1_weights(tmp_path / "two" / "model")
    assert after_one.keys() == after_two.keys()
    # AdamW's first step moves each weight by about lr * sign(gradient): equal where the gradient is clear of float
    # rounding. (The attention key bias's is zero in exact arithmetic: its sign is rounding's.)
    moved = 0
    for name, weight in after_one.items():
        clear = grads_one[name].abs() > 1e-6 if name in grads_one else torch.zeros_like(weight, dtype=torch.bool)
        torch.testing.assert_close(after_two[name][clear], weight[clear], rtol=0, atol=1e-5, msg=name)
        moved += int(clear.sum())
    assert moved > 1000
    # Only process 0 wrote: the checkpoint (each better epoch, and the final one), the progress file.
    assert {p.name for p in (tmp_path / "two").glob("saved-by-*")} == {"saved-by-0"}
    assert json.loads((tmp_path / "two" / "progress.json").read_text())["stage"] == "done"
    assert json.loads((tmp_path / "two" / "metrics-1.json").read_text()) == {"stage": 1, "rank": 1, "processes": 2}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node 2 -m model train ...`: the real entry point, two gloo processes."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "model", "train", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow  # two torchrun launches of two processes each
def test_torchrun_trains_from_the_same_command_and_resumes(tiny_shop, tiny_encoder, tmp_path):
    from model.train import STATE

    write_tables(tiny_shop, tmp_path / "shop")
    out = tmp_path / "model"
    common = ["--data", str(tmp_path / "shop"), "--out", str(out), "--base-model", str(tiny_encoder), "--dim", "16",
              "--batch-size", "16", "--behaviour-epochs", "1", "--device", "cpu",
              "--progress-file", str(tmp_path / "progress.json")]
    first = torchrun(*common, "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    # Process 0 alone logs and reports; the other's lines would double them.
    assert "2 processes (gloo)" in first.stdout and first.stdout.count("epoch 1: loss") == 1
    assert first.stdout.count(f"in {out}: validation NDCG@10") == 1
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["processes"] == 2 and metrics["log"][0]["processes"] == 2
    assert load(out).recommend(query="wool sock", k=3)
    # Interrupted after epoch 1 (as a Ctrl-C leaves it), resumed under two processes.
    (out / STATE).write_text(json.dumps({"best": {"NDCG@10": metrics["log"][0]["valid_NDCG@10"], "epoch": 1},
                                         "log": metrics["log"]}))
    resumed = torchrun(*common, "--epochs", "3", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming after epoch 1") == 1 and "epoch 1: loss" not in resumed.stdout
    again = json.loads((out / "config.json").read_text())["metrics"]
    assert [e["epoch"] for e in again["log"]] == [1, 2, 3] and again["processes"] == 2
    assert not (out / STATE).exists() and json.loads((tmp_path / "progress.json").read_text())["stage"] == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".model.cache", "model", "progress.json", "shop"]
    assert load(out).recommend(query="wool sock", k=3)
