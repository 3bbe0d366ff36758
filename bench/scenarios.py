"""Benchmark of scenarios and updates: adapters over a shared backbone against separate full models, and an update
of a stale model against the stale model and a full retraining.

Phases (--only picks some; each adds its part to the JSON file, so a run can be done phase by phase):

  update     the demo shop with its last --weeks weeks held back: a model trained on the rest (stale), that model
             updated on the whole shop (`python -m model update`: warm start, the new weeks' moments only), and a
             model trained afresh on the whole shop (full retraining). Test NDCG@10 / HR@10 on the held-back
             weeks' test moments (each user's last interaction, if it falls in them) for all three, the stale one
             reading the same histories; the update's time against the retraining's.
  split      the demo shop split by category group into two scenarios (CATEGORY_GROUPS): a full model per group,
             and per group an adapter over the other group's model, on the group's own test split.
  ml100k, scientific, demo
             per dataset, an adapter over a backbone trained on another dataset (BACKBONES) against the full model
             trained on the dataset alone (an existing checkpoint, --full-*; with --retrain-full it is trained
             again here so the two training times come from one machine state).

Every model is scored by `evaluate_model` (full catalog, history excluded, leave-last-out), the adapter and the
full model on the same split. Trainable parameters, disk per scenario (an adapter's directory holds no encoder: the
backbone's is shared) and training time are recorded beside. Training runs are heavy: run this under
`flock /work/heavy.lock`. Writes bench/results/scenarios.json (or --out); models go to --work.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scenarios.json"
SHARED = ROOT.parent / "shared" / "data"
MAIN = ROOT.parent / "main"

# The demo recipe (Makefile DEMO_TRAIN): a text-only model with the lexical channel, at most 15 epochs.
DEMO_RECIPE = {"use_id_embedding": False, "lexical_text": True}
DEMO_EPOCHS = 15
CATEGORY_GROUPS = {
    "home": ("Kitchen", "Garden", "Pets", "Bedding", "Coffee", "Stationery", "Skincare"),
    "active-and-tech": ("Gaming", "Outdoor", "Toys", "Audio", "Running", "Fitness"),
}
# Which existing full model each dataset's adapter adapts: one trained on another dataset.
BACKBONES = {"ml100k": "scientific", "scientific": "ml100k", "demo": "scientific"}
DATASETS = {"ml100k": SHARED / "movielens_100k", "scientific": SHARED / "amazon_scientific"}


def directory_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def scored(recommender, dataset=None, **window) -> dict:
    from model.evaluate import evaluate_model

    report = evaluate_model(recommender, dataset, **window)
    model = report["models"]["model"]
    return {"NDCG@10": model["NDCG@10"], "HR@10": model["HR@10"], "users": report["users"],
            "baselines": {name: report["summary"][name]["NDCG@10"] for name in report["summary"] if name != "model"}}


def trainable_of(recommender) -> int:
    """A full model's trainable parameters: its network but the frozen encoder (and an unused ID table)."""
    return sum(p.numel() for name, p in recommender.net.named_parameters()
               if not name.startswith("encoder.") and (recommender.config.use_id_embedding or
                                                       not name.startswith("item_id.")))


def timed_train(dataset, out: Path, **options) -> tuple[dict, dict]:
    """Train; the metrics and the time it took: wall seconds, and the CPU seconds of this process (all its threads),
    which a machine shared with other work inflates far less than the wall time."""
    from model.train import train

    started, cpu_started = time.perf_counter(), time.process_time()
    metrics = train(dataset, out, progress=False, **options)
    return metrics, {"train_seconds": time.perf_counter() - started,
                     "train_cpu_seconds": time.process_time() - cpu_started}


def full_entry(path: Path, dataset=None, timing: dict | None = None, note: str = "") -> dict:
    from model.checkpoint import load

    recommender = load(path)
    metrics = json.loads((path / "metrics.json").read_text())
    return {"checkpoint": str(path), "checkpoint_id": recommender.checkpoint_id,
            "test": scored(recommender, dataset), "trainable_parameters": trainable_of(recommender),
            "disk_bytes": directory_bytes(path),
            **(timing if timing is not None else {"train_seconds": metrics.get("train_seconds")}),
            "train_seconds_note": note or "measured in this run"}


def adapter_entry(path: Path, metrics: dict, timing: dict) -> dict:
    from model.checkpoint import load

    recommender = load(path)
    return {"checkpoint": str(path), "checkpoint_id": recommender.checkpoint_id, "test": scored(recommender),
            "trainable_parameters": metrics["trainable_parameters"], "disk_bytes": directory_bytes(path),
            **timing, "best_epoch": metrics["best_epoch"],
            "backbone": recommender.metadata["backbone"]}


def demo_data():
    from data.io import load_dataset

    return load_dataset(MAIN / "demo" / "data")


def subset(dataset, *, categories=None, before=None, source: str):
    from data.schema import make_dataset

    items, events = dataset.items, dataset.events
    if categories is not None:
        items = items[items["category"].isin(categories)].reset_index(drop=True)
        events = events[events["item_id"].isin(items["item_id"])]
    if before is not None:
        events = events[events["timestamp"] < before]
    return make_dataset(items, events.reset_index(drop=True), source=source, format="contract")


def phase_update(args, work: Path) -> dict:
    from model.checkpoint import load
    from model.train import TrainConfig

    shop = demo_data()
    cut = shop.events["timestamp"].max().normalize() - pd.Timedelta(weeks=args.weeks)
    stale_data = subset(shop, before=cut, source="demo shop before the held-back weeks")
    recipe = TrainConfig(epochs=DEMO_EPOCHS)
    _, stale_timing = timed_train(stale_data, work / "stale", model_overrides=DEMO_RECIPE, train_config=recipe)
    update_metrics, update_timing = timed_train(shop, work / "updated", parent=work / "stale",
                                                 train_config=TrainConfig(epochs=10, patience=2, lr=args.update_lr))
    _, full_timing = timed_train(shop, work / "retrained", model_overrides=DEMO_RECIPE, train_config=recipe)
    window = {"since": cut}
    result = {
        "held_back_from": cut.isoformat(), "weeks": args.weeks,
        "events": {"before": len(stale_data.events), "held_back": int((shop.events["timestamp"] >= cut).sum())},
        "stale": {"test": scored(load(work / "stale"), shop, **window), **stale_timing},
        "updated": {"test": scored(load(work / "updated"), **window), **update_timing,
                    "epochs": len(update_metrics["log"]), "best_epoch": update_metrics["best_epoch"],
                    "lineage": json.loads((work / "updated" / "config.json").read_text())["lineage"]},
        "retrained": {"test": scored(load(work / "retrained"), **window), **full_timing},
    }
    result["update_time_vs_retraining"] = update_timing["train_seconds"] / full_timing["train_seconds"]
    result["update_cpu_time_vs_retraining"] = update_timing["train_cpu_seconds"] / full_timing["train_cpu_seconds"]
    return result


def phase_split(args, work: Path) -> dict:
    from model.train import TrainConfig

    shop = demo_data()
    groups = {name: subset(shop, categories=categories, source=f"demo shop: {name}")
              for name, categories in CATEGORY_GROUPS.items()}
    recipe = TrainConfig(epochs=DEMO_EPOCHS)
    result = {}
    for name, data in groups.items():
        _, timing = timed_train(data, work / f"full-{name}", model_overrides=DEMO_RECIPE, train_config=recipe)
        result[name] = {"items": len(data.items), "events": len(data.events),
                        "full": full_entry(work / f"full-{name}", timing=timing)}
    for name, data in groups.items():
        other = next(g for g in groups if g != name)
        metrics, timing = timed_train(data, work / f"adapter-{name}", backbone=work / f"full-{other}",
                                      scenario=name, train_config=recipe)
        result[name]["adapter"] = adapter_entry(work / f"adapter-{name}", metrics, timing)
    return result


def full_model_path(args, name: str) -> Path:
    return {"ml100k": args.full_ml100k, "scientific": args.full_scientific, "demo": args.full_demo}[name]


def phase_dataset(args, work: Path, name: str) -> dict:
    from data.io import load_dataset
    from model.train import TrainConfig

    data = demo_data() if name == "demo" else load_dataset(DATASETS[name])
    backbone = full_model_path(args, BACKBONES[name])
    recipe = TrainConfig(epochs=DEMO_EPOCHS if name == "demo" else 30)
    metrics, timing = timed_train(data, work / f"adapter-{name}", backbone=backbone, scenario=name,
                                  train_config=recipe)
    result = {"adapter": adapter_entry(work / f"adapter-{name}", metrics, timing)}
    if args.retrain_full:
        overrides = DEMO_RECIPE if name == "demo" else {}
        _, timing = timed_train(data, work / f"full-{name}", model_overrides=overrides, train_config=recipe)
        result["full"] = full_entry(work / f"full-{name}", timing=timing)
    else:
        result["full"] = full_entry(full_model_path(args, name), data,
                                    note="from the checkpoint's metrics: trained earlier, machine load unknown")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=("update", "split", "ml100k", "scientific", "demo"),
                        default=["update", "split", "ml100k", "scientific", "demo"])
    parser.add_argument("--weeks", type=int, default=4)
    parser.add_argument("--update-lr", type=float, default=1e-3)
    parser.add_argument("--full-ml100k", type=Path, default=MAIN / "runs" / "ml100k")
    parser.add_argument("--full-scientific", type=Path, default=MAIN / "runs" / "amazon")
    parser.add_argument("--full-demo", type=Path, default=MAIN / "demo" / "model")
    parser.add_argument("--retrain-full", action="store_true", help="train the datasets' full models here too")
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "scenarios")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    args.work.mkdir(parents=True, exist_ok=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    results["conditions"] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                             "load_average_at_start": os.getloadavg()}
    for phase in args.only:
        started = time.perf_counter()
        work = args.work / phase
        if phase == "update":
            results["update"] = phase_update(args, work)
        elif phase == "split":
            results["split"] = phase_split(args, work)
        else:
            results.setdefault("datasets", {})[phase] = phase_dataset(args, work, phase)
        results.setdefault("phase_seconds", {})[phase] = time.perf_counter() - started
        results["conditions"]["load_average_at_end"] = os.getloadavg()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, default=str))
        print(json.dumps({phase: results.get(phase) or results["datasets"].get(phase)}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
