"""Stage-1 training throughput and validation NDCG@10 with one process and with several under torchrun (DDP).

Trains the same data with the same seed and epoch cap through the one entry point, `python -m model train`
(one process) and `torchrun --standalone --nproc-per-node N -m model train` (N gloo processes on the CPU, or NCCL
on CUDA with one GPU each). The CPU's cores are split evenly: OMP_NUM_THREADS = cores / processes. Throughput
is the median over epochs of the next-item positions (and of the training split's events) trained per second of
stage-1 steps; evaluation, checkpoints and stage 2 are left out of it. A further one-process run with another seed
says how far validation NDCG@10 moves from seed noise alone, the yardstick for the processes' difference.
Writes bench/results/scale_training.json.

    python -m bench.scale_training --data demo/data --epochs 4 -- --no-id-embedding --lexical-text
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale_training.json"


def train_command(processes: int, data: Path, out: Path, seed: int, epochs: int, device: str,
                  extra: list[str]) -> list[str]:
    launcher = [sys.executable, "-m", "model"] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
        "-m", "model"]
    return [*launcher, "train", "--data", str(data), "--out", str(out), "--seed", str(seed), "--epochs",
            str(epochs), "--device", device, *extra]


def run(processes: int, seed: int, args, extra: list[str], training_events: int) -> dict:
    """One training run; what its checkpoint says about stage 1 and the ranking, and its wall time."""
    out = args.work / f"model-{processes}p-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cache = out.parent / f".{out.name}.cache"
    if not cache.exists() and any(args.work.glob(".model-*.cache")):  # the frozen encoder's embeddings, once
        shutil.copytree(next(args.work.glob(".model-*.cache")), cache)
    threads = max(1, (os.cpu_count() or 1) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    command = train_command(processes, args.data, out, seed, args.epochs, args.device, extra)
    print(f"{processes} process(es), seed {seed}, {threads} thread(s) each: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    (args.work / f"{out.name}.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"training failed ({done.returncode}); see {args.work / (out.name + '.log')}")
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    epochs = metrics["log"]
    positions_per_s = [e["positions"] / e["steps_seconds"] for e in epochs]
    events_per_s = [training_events / e["steps_seconds"] for e in epochs]
    return {
        "processes": processes, "seed": seed, "threads_per_process": threads, "device": metrics["device"],
        "epochs": len(epochs), "best_epoch": metrics["best_epoch"],
        "epoch_steps_seconds": [round(e["steps_seconds"], 2) for e in epochs],
        "positions_per_epoch": epochs[0]["positions"],
        "positions_per_s_median": statistics.median(positions_per_s),
        "events_per_s_median": statistics.median(events_per_s),
        "valid_ndcg10_by_epoch": [e["valid_NDCG@10"] for e in epochs],
        "valid_ndcg10_stage1": metrics["valid_stage1"]["NDCG@10"],
        "valid_ndcg10": metrics["valid"]["NDCG@10"],
        "stage1_seconds": metrics["stage1_seconds"], "wall_seconds": wall,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT / "demo" / "data")
    parser.add_argument("--processes", type=int, default=2, help="processes of the distributed run")
    parser.add_argument("--epochs", type=int, default=4, help="the same cap for every run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-seed", type=int, default=1, help="the one-process run's second seed (-1: none)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scale_training")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="more `model train` options, after --")
    args = parser.parse_args(argv)
    # Stage 2 runs on process 0 alone and does not count here: one epoch per head keeps the runs short.
    extra = ["--behaviour-epochs", "1", *args.extra]
    args.work.mkdir(parents=True, exist_ok=True)

    from data.io import load_dataset
    from data.split import leave_last_out

    training_events = len(leave_last_out(load_dataset(args.data)).train)
    load_before = os.getloadavg()[0]
    runs = [run(1, args.seed, args, extra, training_events),
            run(args.processes, args.seed, args, extra, training_events)]
    if args.noise_seed >= 0:
        runs.append(run(1, args.noise_seed, args, extra, training_events))
    one, several = runs[0], runs[1]
    summary = {
        "speedup_events_per_s": several["events_per_s_median"] / one["events_per_s_median"],
        "valid_ndcg10_stage1_difference": several["valid_ndcg10_stage1"] - one["valid_ndcg10_stage1"],
        "valid_ndcg10_difference": several["valid_ndcg10"] - one["valid_ndcg10"],
    }
    if args.noise_seed >= 0:
        summary["valid_ndcg10_stage1_seed_difference"] = runs[2]["valid_ndcg10_stage1"] - one["valid_ndcg10_stage1"]
        summary["valid_ndcg10_seed_difference"] = runs[2]["valid_ndcg10"] - one["valid_ndcg10"]
    result = {"benchmark": "scale_training", "data": str(args.data), "training_events": training_events,
              "options": extra, "epoch_cap": args.epochs, "cpus": os.cpu_count(), "runs": runs, "summary": summary,
              "load_average_1m_before": load_before, "load_average_1m_after": os.getloadavg()[0],
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    for r in runs:
        print(f"{r['processes']} process(es), seed {r['seed']}: {r['events_per_s_median']:.0f} events/s "
              f"({r['positions_per_s_median']:.0f} positions/s), validation NDCG@10 stage 1 "
              f"{r['valid_ndcg10_stage1']:.4f}, with behaviour {r['valid_ndcg10']:.4f}")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
