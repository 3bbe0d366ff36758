"""Benchmark of ranking quality: the trained model beside its baselines (and a published anchor) on real data."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench" / "results" / "quality.json"
RUNS = ROOT / "runs" / "bench"  # git-ignored: checkpoints are reused while their data and training config match
DEMO = "demo"  # stands for the demo shop: demo/data if it exists, else freshly generated as `make run` would
DEMO_WITH_IDS = "demo-with-ids"  # the same shop, the model with its per-item ID memory: what leaving it out costs
DEFAULT_DATA = (str(SHARED / "data" / "amazon_scientific"), str(SHARED / "data" / "movielens_100k"), DEMO,
                DEMO_WITH_IDS)
# Model settings per dataset; the rest are RecommenderConfig's defaults. The demo model is trained as `make demo`
# trains it: without the ID memory, so every part of its scores is explained, and with the lexical channel that
# learns the shop's made-up brand names (README, "The model").
MODEL_OVERRIDES = {DEMO: {"use_id_embedding": False, "lexical_text": True}, DEMO_WITH_IDS: {"lexical_text": True}}

# Published full-ranking, leave-one-out results on the same files, for orientation; their protocol details
# (candidate set, history masking) are the papers', so a gap of a few thousandths is not a verdict.
ANCHORS = {
    "amazon_scientific": {
        "Recformer (KDD'23, published)": {"NDCG@10": 0.1027, "HR@10": 0.1448, "MRR": 0.0951},
    },
}
COLUMNS = ("NDCG@10", "HR@10", "MRR", "coverage@10")


def machine() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "platform": platform.platform(), "load_average_1m": os.getloadavg()[0]}


def dataset_name(spec: str) -> str:
    return spec if spec in (DEMO, DEMO_WITH_IDS) else Path(spec).resolve().name


def load(spec: str, scratch: Path):
    """The dataset a spec names: a path any reader understands, or `demo`."""
    from data.io import load_dataset

    if spec not in (DEMO, DEMO_WITH_IDS):
        return load_dataset(spec)
    existing = ROOT / "demo" / "data"
    if (existing / "events.csv").exists():
        return load_dataset(existing)
    from data.__main__ import main as data_cli

    if data_cli(["generate", "--out", str(scratch / "demo")]) != 0:
        raise RuntimeError("generating the demo data failed")
    return load_dataset(scratch / "demo")


def trained_checkpoint(dataset, out: Path, config, *, retrain: bool, model_overrides: dict | None = None
                       ) -> tuple[float, bool]:
    """Train into `out` unless a checkpoint there saw the same data and config; (train seconds, reused)."""
    from model.checkpoint import check_features, read_config
    from model.errors import CheckpointError
    from model.recommender import RecommenderConfig
    from model.train import train

    if not retrain and (out / "config.json").exists():
        try:
            stored = read_config(out)
            check_features(out, stored)  # trained on the behaviour features this build computes
        except CheckpointError:
            stored = {}
        same_data = stored.get("data", {}).get("fingerprint") == dataset.meta.fingerprint
        same_config = stored.get("train") == dataclasses.asdict(config)
        defaults = {f.name: f.default for f in dataclasses.fields(RecommenderConfig)}
        same_model = all(stored.get("model", {}).get(k, defaults[k]) == v
                         for k, v in {"use_id_embedding": True, **(model_overrides or {})}.items())
        if same_data and same_config and same_model and stored.get("metrics", {}).get("stage") == 2:
            print(f"reusing checkpoint {stored['checkpoint_id']} in {out}")
            return float(stored["metrics"].get("train_seconds", float("nan"))), True
    started = time.perf_counter()
    metrics = train(dataset, out, train_config=config, model_overrides=model_overrides)
    if metrics.get("interrupted"):
        raise KeyboardInterrupt
    return time.perf_counter() - started, False


def table(name: str, report: dict) -> str:
    excluded, included = report["modes"]["history_excluded"], report["modes"]["history_included"]
    header = f"{'':34s}" + "".join(f"{c:>12s}" for c in COLUMNS) + f"{'NDCG@10 incl.':>15s}{'HR@10 incl.':>13s}"
    lines = [f"{name}: {report['users']} users, {report['dataset']['items']} items "
             f"(history excluded; 'incl.' = history not excluded)", header]
    for scorer, metrics in excluded.items():
        lines.append(f"{scorer:34s}" + "".join(f"{metrics[c]:12.4f}" for c in COLUMNS)
                     + f"{included[scorer]['NDCG@10']:15.4f}{included[scorer]['HR@10']:13.4f}")
    for anchor, metrics in ANCHORS.get(name, {}).items():
        lines.append(f"{anchor:34s}" + "".join(f"{metrics[c]:12.4f}" if c in metrics else f"{'-':>12s}"
                                                for c in COLUMNS))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__)
    parser.add_argument("--data", nargs="+", default=list(DEFAULT_DATA),
                        help=f"dataset paths, '{DEMO}' for the demo shop or '{DEMO_WITH_IDS}' for it with the ID "
                             "memory (default: Scientific, MovieLens, both demo runs)")
    parser.add_argument("--epochs", type=int, default=None, help="stage-1 epoch cap (default: TrainConfig's)")
    parser.add_argument("--train-seconds", type=float, default=0.0, help="stage-1 time budget (0: none)")
    parser.add_argument("--max-users", type=int, default=None, help="evaluate a fixed sample of users (quick checks)")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads (default: torch's choice); 1 is kinder on a CPU shared with other work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--retrain", action="store_true", help="train even if a matching checkpoint exists")
    parser.add_argument("--runs", type=Path, default=RUNS, help="where the checkpoints live")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if (args.epochs is not None and args.epochs < 1) or args.train_seconds < 0:
        print("error: --epochs must be at least 1 and --train-seconds not negative", file=sys.stderr)
        return 2
    if args.max_users is not None and args.max_users < 1:
        print(f"error: --max-users {args.max_users} must be at least 1", file=sys.stderr)
        return 2
    if args.threads < 0:
        print(f"error: --threads {args.threads} must be positive (0: torch's default)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    from data.errors import WhyRecError
    from model.checkpoint import load as load_checkpoint
    from model.evaluate import evaluate_model
    from model.train import TrainConfig

    overrides = {"seed": args.seed, "time_budget_s": args.train_seconds}
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = TrainConfig(**overrides)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results = {"benchmark": "quality", "datasets": results.get("datasets", {})}
    tables = []
    with tempfile.TemporaryDirectory(prefix="whyrec-bench-") as scratch:
        for spec in args.data:
            name = dataset_name(spec)
            try:
                dataset = load(spec, Path(scratch))
                out = args.runs / name
                train_seconds, reused = trained_checkpoint(dataset, out, config, retrain=args.retrain,
                                                           model_overrides=MODEL_OVERRIDES.get(name))
                recommender = load_checkpoint(out)
                report = evaluate_model(recommender, progress=True, max_users=args.max_users)
            except WhyRecError as exc:
                print(f"error: {name}: {exc}", file=sys.stderr)
                return 2
            tables.append(table(name, report))
            print(tables[-1], flush=True)
            results["datasets"][name] = {
                "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "machine": machine(),
                "checkpoint": str(out.relative_to(ROOT) if out.is_relative_to(ROOT) else out),
                "train_config": dataclasses.asdict(config),
                "model_overrides": MODEL_OVERRIDES.get(name, {}),
                "train_seconds": train_seconds,
                "checkpoint_reused": reused,
                "anchors": ANCHORS.get(name, {}),
                "evaluation": report,
            }
    print()
    print("\n\n".join(tables))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, default=_plain) + "\n")
    tmp.replace(args.out)
    print(f"wrote {args.out}")
    return 0


def _plain(value):
    """numpy scalars in reports become plain numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    raise SystemExit(main())
