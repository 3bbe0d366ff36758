"""Shops from 10k to 1M users: generate, load, check, behaviour features, a stage-1 epoch, explain, the dashboard.

Each step of each size runs in a process of its own, so its wall time and peak resident memory (the process's
high-water RSS since exec, VmHWM; ru_maxrss from os.wait4 where /proc is missing) are its own. Shops follow
the issue's shape: items are 10% of users and each user has about 20 events. Writes bench/results/scale.json.

    python -m bench.scale --users 10000 100000 1000000 --root /tmp/scale-data
    python -m bench.scale --users 10000 --steps generate load
    python -m bench.scale --users 10000 --steps checkpoint epoch explain render --append
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "scale.json"
ITEMS_PER_USER = 0.1  # the shape: a catalog a tenth the size of the crowd
EVENTS_PER_USER = 20
SEED = 0
REQUEST_USERS = 20  # full-catalog feature requests timed per shop (what one Recommend page asks for)
SAMPLE_MOMENTS = 2_000  # (user, moment) pairs of the point-in-time sample, each scored on SAMPLE_ITEMS items
SAMPLE_ITEMS = 10
TARGET_SECONDS = 300  # the 1M-user shop generates and loads within 5 minutes...
TARGET_PEAK_GB = 8.0  # ...and 8 GB
EPOCH_FULL_UP_TO = 100_000  # users: a larger shop's stage-1 epoch is timed over EPOCH_STEPS steps and projected
EPOCH_STEPS = 30  # at 1M users an epoch is ~7,800 steps of 128 users, each a softmax over 100,000 items
EXPLAIN_STEPS = 50  # IG steps, as the Recommend panel explains by default
SCALED_MODEL = ("bench.scale_serving's scaled checkpoint: the trained source model's weights, its items copied with "
                "noise, over a synthetic shop of this size")


def shop_size(users: int) -> dict:
    return {"users": users, "items": max(20, round(ITEMS_PER_USER * users)), "events_per_user": EVENTS_PER_USER}


# ---------------------------------------------------------------------------------------------
# Steps. Each runs inside its own process, reads or writes the shop in `directory` and returns a dict for the JSON.


def step_generate(directory: Path, users: int, source: Path | None = None) -> dict:
    """`python -m data generate --kind parquet`: the seeded shop with its planted truth, written as Parquet."""
    from data.io import write_tables
    from data.synthetic import generate

    size = shop_size(users)
    started = time.perf_counter()
    dataset = generate(n_users=users, n_items=size["items"], seed=SEED, target_events=EVENTS_PER_USER * users)
    generated = time.perf_counter()
    write_tables(dataset, directory, kind="parquet")
    written = time.perf_counter()
    return {"seconds": written - started, "generate_seconds": generated - started, "write_seconds": written - generated,
            "users": users, "items": len(dataset.items), "events": len(dataset.events),
            "files_mb": round(sum(f.stat().st_size for f in directory.iterdir()) / 2**20, 1)}


def step_load(directory: Path, users: int, source: Path | None = None) -> dict:
    """`load_dataset`: read, validate, set aside duplicates, sort, fingerprint (the planted truth stays on disk)."""
    from data.io import load_dataset

    started = time.perf_counter()
    dataset = load_dataset(directory)
    return {"seconds": time.perf_counter() - started, "events": len(dataset.events), "items": len(dataset.items),
            "fingerprint": dataset.meta.fingerprint}


def step_quality(directory: Path, users: int, source: Path | None = None) -> dict:
    """The data-quality report on the loaded shop (load time reported apart; peak memory covers both)."""
    from data.io import load_dataset
    from data.quality import quality_report

    started = time.perf_counter()
    dataset = load_dataset(directory)
    loaded = time.perf_counter()
    report = quality_report(dataset)
    return {"seconds": time.perf_counter() - loaded, "load_seconds": loaded - started,
            "findings": [finding.code for finding in report.findings]}


def step_features(directory: Path, users: int, source: Path | None = None) -> dict:
    """Point-in-time behaviour features: the store's build, the full-catalog features of one request (at=None,
    as the Recommend page asks), and a bounded sample of past moments (pair_features, as training reads them)."""
    from data.features import FeatureStore
    from data.io import load_dataset

    started = time.perf_counter()
    dataset = load_dataset(directory)
    loaded = time.perf_counter()
    store = FeatureStore(dataset)
    built = time.perf_counter()

    rng = np.random.default_rng(SEED)
    request_ms = []
    for user_id in rng.choice(dataset.user_ids, REQUEST_USERS, replace=False):
        begun = time.perf_counter()
        store.user_features(str(user_id))
        request_ms.append((time.perf_counter() - begun) * 1e3)

    events = dataset.events
    moments = events.iloc[np.sort(rng.choice(len(events), SAMPLE_MOMENTS, replace=False))]
    user_ids = np.repeat(moments["user_id"].to_numpy(dtype=object), SAMPLE_ITEMS)
    ats = np.repeat(moments["timestamp"].to_numpy(), SAMPLE_ITEMS)
    item_index = rng.integers(0, len(dataset.items), len(user_ids))
    begun = time.perf_counter()
    features = store.pair_features(user_ids, item_index, ats)
    sample_seconds = time.perf_counter() - begun
    return {"seconds": built - loaded, "load_seconds": loaded - started, "build_seconds": built - loaded,
            "request_ms_p50": float(np.median(request_ms)), "request_ms_max": float(np.max(request_ms)),
            "request_items": len(dataset.items),
            "sample_rows": len(features), "sample_moments": SAMPLE_MOMENTS, "sample_seconds": sample_seconds,
            "sample_rows_per_second": len(features) / sample_seconds}


# The model steps (checkpoint, epoch, explain, render) run on the scaled checkpoint of bench.scale_serving: a shop of
# the same shape drawn by bench.features.synthetic_shop, its items copies of a trained model's items with noise, the
# network that model's trained weights (encoding a 100,000-item catalog with MiniLM alone takes most of an hour here).


def model_directory(directory: Path) -> Path:
    """Where the size's scaled checkpoint lives: beside its shop, removed with it."""
    return directory.parent / f"{directory.name}-model"


def step_checkpoint(directory: Path, users: int, source: Path | None = None) -> dict:
    """bench.scale_serving.build_app_checkpoint: the shop of `users`, the scaled `source` model over it, saved."""
    from bench.scale_serving import SOURCE_MODEL, build_app_checkpoint

    source = source or SOURCE_MODEL
    model = model_directory(directory)
    started = time.perf_counter()
    built = build_app_checkpoint(source, model, users, SEED)
    return {"seconds": time.perf_counter() - started, **built, "checkpoint": str(model), "source": str(source),
            "model": SCALED_MODEL}


def step_epoch(directory: Path, users: int, source: Path | None = None) -> dict:
    """One stage-1 epoch (model.train.stage1_epoch, as `model train` runs it) on the checkpoint's shop, on the CPU
    with every core; past EPOCH_FULL_UP_TO users, EPOCH_STEPS steps of it, and the epoch projected from them."""
    import torch

    from data.split import leave_last_out
    from model.checkpoint import load
    from model.train import (
        Stage1Objective,
        TrainConfig,
        stage1_batch_size,
        stage1_epoch,
        stage1_optimizer,
        training_histories,
    )

    started = time.perf_counter()
    recommender = load(model_directory(directory), device="cpu")
    loaded = time.perf_counter()
    config = TrainConfig(seed=SEED)
    dataset, net = recommender.dataset, recommender.net
    split = leave_last_out(dataset, min_history=config.min_history)
    histories = training_histories(split.train, dataset.item_position)
    prepared = time.perf_counter()
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    net.train()
    text = recommender.text_embeddings
    full = users <= EPOCH_FULL_UP_TO
    done = stage1_epoch(net, Stage1Objective(net), stage1_optimizer(net, config), histories,
                        rng.permutation(len(histories)), stage1_batch_size(config, len(histories)), text, text,
                        [], config, torch.device("cpu"), rng, max_steps=0 if full else EPOCH_STEPS)
    return {"seconds": done.seconds, "load_seconds": loaded - started, "prepare_seconds": prepared - loaded,
            "threads": torch.get_num_threads(), "training_users": len(histories),
            "training_events": len(split.train), **epoch_figures(done, len(split.train)),
            "mean_loss": float(np.mean(done.losses)), "model": SCALED_MODEL,
            "query_embeddings": "the items' text embeddings stand in for the pseudo-queries' (same shape; encoding "
                                "them is not part of an epoch)"}


def epoch_figures(done, training_events: int) -> dict:
    """Throughput of a stage-1 pass (model.train.Stage1Pass) and the whole epoch's time: measured when the pass
    was the whole epoch, else projected from its steps (flagged `projected`)."""
    projected = done.steps < done.epoch_steps
    epoch_seconds = done.seconds * done.epoch_steps / done.steps
    return {"steps": done.steps, "epoch_steps": done.epoch_steps, "positions": done.positions,
            "seconds_per_step": done.seconds / done.steps, "positions_per_s": done.positions / done.seconds,
            "events_per_s": training_events / epoch_seconds, "epoch_seconds": epoch_seconds, "projected": projected}


def step_explain(directory: Path, users: int, source: Path | None = None) -> dict:
    """The Recommend panel's explanation of a user's top item (explain.explain, 50 IG steps, no drill-down) and,
    apart, its deletion test (explain.faithfulness), on the scaled checkpoint loaded as the dashboard loads it (one
    thread). The first user warms the explainers up, as the dashboard does at start; the others are timed."""
    import torch

    from explain import explain, faithfulness
    from model.checkpoint import load
    from model.quantize import DEFAULT_QUANTIZE

    model = model_directory(directory)
    torch.set_num_threads(1)  # as views.loaders serves: one thread per request
    started = time.perf_counter()
    recommender = load(model, quantize=DEFAULT_QUANTIZE)
    loaded = time.perf_counter()
    chosen = json.loads(model.with_suffix(".users.json").read_text())
    warm, timed = chosen[0], chosen[1:]
    explain(recommender, recommender.recommend(user_id=warm, k=1)[0].item_id, user_id=warm, n_steps=2,
            drill_down=0)
    explain_s, faithfulness_s = [], []
    for user in timed:
        item = recommender.recommend(user_id=user, k=1)[0].item_id
        began = time.perf_counter()
        explanation = explain(recommender, item, user_id=user, n_steps=EXPLAIN_STEPS, drill_down=0)
        explain_s.append(time.perf_counter() - began)
        began = time.perf_counter()
        faithfulness(recommender, explanation)
        faithfulness_s.append(time.perf_counter() - began)
    return {"seconds": float(np.median(explain_s)), "load_seconds": loaded - started, "users_timed": timed,
            "explain_s": explain_s, "explain_p50_s": float(np.median(explain_s)), "faithfulness_s": faithfulness_s,
            "faithfulness_p50_s": float(np.median(faithfulness_s)), "n_steps": EXPLAIN_STEPS, "drill_down": 0,
            "model": SCALED_MODEL}


def step_render(directory: Path, users: int, source: Path | None = None) -> dict:
    """The dashboard on the scaled checkpoint in a real browser (bench.scale_serving.page_timings): the first
    ranked list while the model loads, then new visitors' first Recommend page, and the server's memory."""
    from bench.scale_serving import page_timings

    model = model_directory(directory)
    chosen = json.loads(model.with_suffix(".users.json").read_text())
    timings = page_timings(model, chosen[1:])
    return {"seconds": timings["new_visitor_first_ranked_list_median_s"], **timings,
            "app_peak_rss_gb": timings["app_peak_rss_mb"] / 1024, "app_rss_gb": timings["app_rss_mb"] / 1024,
            "model": SCALED_MODEL}


STEPS = {"generate": step_generate, "load": step_load, "quality": step_quality, "features": step_features,
         "checkpoint": step_checkpoint, "epoch": step_epoch, "explain": step_explain, "render": step_render}


# ---------------------------------------------------------------------------------------------
# Running: one process per (size, step).


def run_step(step: str, directory: Path, users: int, source: Path | None = None) -> dict:
    """Run one step in a fresh interpreter; its wall time and its own peak RSS come from the operating system."""
    command = [sys.executable, "-m", "bench.scale", "--one-step", step, "--users", str(users), "--root",
               str(directory), *(["--source", str(source)] if source else [])]
    load_before = os.getloadavg()[0]
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    started = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    with child.stdout:
        output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    result = {"step": step, "wall_seconds": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),
              "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2), "exit_code": child.returncode,
              "started": when, "load_average_1m": [load_before, os.getloadavg()[0]]}  # before, after
    if child.returncode == 0:
        result.update(json.loads(output.strip().splitlines()[-1]))
        # Linux carries the forking parent's peak into the child's ru_maxrss; the child's own high-water mark
        # (VmHWM, reset by exec) is the step's alone.
        own = result.pop("own_peak_rss_gb")
        result["peak_rss_gb"] = round(own, 3) if own is not None else result["peak_rss_gb"]
    return result


def own_peak_rss_gb() -> float | None:
    """This process's peak resident memory since exec (VmHWM), where /proc has it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20  # kB
    except OSError:
        pass
    return None


def run_size(users: int, steps: list[str], root: Path, keep: bool, source: Path | None = None) -> dict:
    directory = root / f"shop-{users}"
    if "generate" in steps and directory.exists():
        shutil.rmtree(directory)
    results = {**shop_size(users), "directory": str(directory), "steps": {}}
    for step in steps:
        print(f"[{users} users] {step} ...", file=sys.stderr, flush=True)
        result = run_step(step, directory, users, source)
        results["steps"][step] = result
        print(f"[{users} users] {step}: {result['wall_seconds']:.1f} s, peak {result['peak_rss_gb']:.2f} GB"
              f"{'' if result['exit_code'] == 0 else ' FAILED'}", file=sys.stderr, flush=True)
        if result["exit_code"] != 0:
            break
    if not keep:  # a 1M-user shop is gigabytes; --keep leaves it for other benchmarks
        for made, by in ((directory, "generate"), (model_directory(directory), "checkpoint")):
            if by in steps and made.exists():
                shutil.rmtree(made)
    generate, load = results["steps"].get("generate"), results["steps"].get("load")
    if generate and load:
        seconds = generate["wall_seconds"] + load["wall_seconds"]
        peak = max(generate["peak_rss_gb"], load["peak_rss_gb"])
        results["generate_and_load"] = {"seconds": round(seconds, 1), "peak_rss_gb": peak,
                                        "within_target": seconds <= TARGET_SECONDS and peak <= TARGET_PEAK_GB}
    return results


def merged_sizes(earlier: list[dict], measured: list[dict]) -> list[dict]:
    """The sizes of an earlier run with this run's measurements in them: a step measured again replaces its entry,
    the others stay (each step keeps the load average of its own run)."""
    by_users = {size["users"]: size for size in earlier}
    for size in measured:
        if size["users"] in by_users:
            kept = by_users[size["users"]]
            size = {**kept, **size, "steps": {**kept.get("steps", {}), **size["steps"]}}
        by_users[size["users"]] = size
    return [by_users[users] for users in sorted(by_users)]


def machine() -> dict:
    return {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
            "cpus": os.cpu_count(), "platform": platform.platform(), "load_average_1m": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    parser.add_argument("--root", type=Path, default=Path("/tmp/whyrec-scale"),
                        help="where the shops are written (outside the repository: a 1M-user shop is gigabytes)")
    parser.add_argument("--keep", action="store_true", help="leave the generated shops in --root")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--source", type=Path, help="the trained checkpoint the model steps scale up (default: "
                        "bench.scale_serving's)")
    parser.add_argument("--append", action="store_true",
                        help="keep the sizes already in --out (a size measured again replaces its entry)")
    # The child process's entry: run one step on the shop in --root (the size's own directory).
    parser.add_argument("--one-step", choices=list(STEPS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one_step:
        result = STEPS[args.one_step](args.root, args.users[0], args.source)
        print(json.dumps({**result, "own_peak_rss_gb": own_peak_rss_gb()}))
        return 0

    started = machine()
    sizes = [run_size(users, args.steps, args.root, args.keep, args.source) for users in args.users]
    if args.append and args.out.exists():
        sizes = merged_sizes(json.loads(args.out.read_text())["sizes"], sizes)
    result = {"benchmark": "scale", "what": "data generate / load / quality report / point-in-time features, "
              "the scaled checkpoint, a stage-1 epoch, the Recommend panel's explanation and the dashboard's first "
              "Recommend page per shop size, each step in its own process: wall seconds and its peak RSS",
              "shape": {"items_per_user": ITEMS_PER_USER, "events_per_user": EVENTS_PER_USER, "seed": SEED,
                        "kind": "parquet"},
              "targets": {"generate_and_load_seconds": TARGET_SECONDS, "peak_rss_gb": TARGET_PEAK_GB},
              "machine": {**started, "load_average_1m_at_end": os.getloadavg()[0]}, "sizes": sizes}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
