"""Benchmark of explanations: cost, IG convergence and faithfulness over sampled (user, top-10 item) pairs.

For N users drawn at random, one item drawn from their top 10:
  * seconds for the whole explanation (IG joint run, SHAP, history drill-down) at n_steps=50, on the first
    --full pairs, and for the joint run alone on all of them;
  * IG's convergence delta relative to what it explains, |delta| / |f(x) - f(baseline)|, at n_steps=50 for all
    pairs and for a sweep of n_steps on the first --sweep pairs;
  * deletion_top3_drop against deletion_random3_drop (explain.faithfulness) on every pair;
  * SHAP Partition (max_evals 500) against IG on the same item's tokens: seconds and Spearman agreement.
Writes bench/results/explain.json. The baseline each number compares with is measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "explain.json"
DEFAULT_MODELS = (ROOT / "demo" / "model", ROOT / "runs" / "bench" / "demo")  # the first that exists
STEPS = 50
SWEEP = (8, 16, 32, 50, 100)
MAX_EVALS = 500


def relative_delta(explanation) -> float:
    """|delta| / |f(x) - f(baseline)|: the joint IG run's shortfall as a share of what it explains."""
    from explain.tokens import JOINT_KINDS, joint_change

    change = joint_change({kind: explanation.part(kind) for kind in JOINT_KINDS})
    return abs(explanation.part("item_tokens").completeness_gap) / max(abs(change), 1e-12)


def sample_pairs(recommender, n: int, seed: int) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    users = [str(u) for u in rng.permutation(np.asarray(recommender.user_ids))[:n]]
    return [(u, str(rng.choice([r.item_id for r in recommender.recommend(user_id=u, k=10)]))) for u in users]


def median(values) -> float | None:
    values = list(values)
    return float(statistics.median(values)) if values else None


def run(model_dir: Path, n_pairs: int, n_full: int, n_sweep: int, n_agreement: int, seed: int) -> dict:
    from explain import explain, faithfulness
    from explain.faithfulness import agreement_with_shap
    from model.checkpoint import load
    from model.serving import score_view

    recommender = load(model_dir)
    pairs = sample_pairs(recommender, n_pairs, seed)
    explain(recommender, pairs[0][1], user_id=pairs[0][0], n_steps=2)  # first calls compile SHAP's numba code
    rows = []
    for i, (user_id, item_id) in enumerate(pairs):
        started = time.perf_counter()
        explanation = explain(recommender, item_id, user_id=user_id, n_steps=STEPS, drill_down=3 if i < n_full else 0)
        seconds = time.perf_counter() - started
        measured = faithfulness(recommender, explanation)
        rows.append({"user_id": user_id, "item_id": item_id, "score": explanation.score,
                     "base_value": explanation.base_value, "seconds": seconds, "full": i < n_full,
                     "timing": explanation.timing, "delta": explanation.part("item_tokens").completeness_gap,
                     "relative_delta": relative_delta(explanation), "flags": list(explanation.flags),
                     "item_tokens": len(explanation.part("item_tokens")),
                     "history_units": len(explanation.part("history")),
                     "deletion_top3_drop": measured["deletion_top3_drop"],
                     "deletion_random3_drop": measured["deletion_random3_drop"],
                     "aopc_comprehensiveness": measured["aopc_comprehensiveness"],
                     "aopc_comprehensiveness_random": measured["aopc_comprehensiveness_random"],
                     "faithfulness_seconds": measured["seconds"]})
        print(f"  {i + 1:3d}/{len(pairs)} {user_id} {item_id}: {seconds:5.2f} s, delta/moved "
              f"{rows[-1]['relative_delta']:.1e}, top-3 drop {measured['deletion_top3_drop']:+.3f} vs random "
              f"{measured['deletion_random3_drop']:+.3f}", flush=True)

    sweep = {}
    for n_steps in SWEEP if n_sweep > 0 else ():  # --sweep 0 skips the sweep
        runs = [explain(recommender, item_id, user_id=user_id, n_steps=n_steps, drill_down=0)
                for user_id, item_id in pairs[:n_sweep]]
        sweep[str(n_steps)] = {"median_relative_delta": median(relative_delta(e) for e in runs),
                               "median_ig_seconds": median(e.timing["integrated_gradients"] for e in runs)}
        print(f"  n_steps {n_steps:4d}: median delta/moved {sweep[str(n_steps)]['median_relative_delta']:.1e}, "
              f"IG {sweep[str(n_steps)]['median_ig_seconds']:.2f} s", flush=True)

    agreement = []
    for user_id, item_id in pairs[:n_agreement]:
        explanation = explain(recommender, item_id, user_id=user_id, n_steps=STEPS, drill_down=0)
        context = recommender.context(user_id)
        view = score_view(recommender, context, int(recommender.item_positions([item_id])[0]))
        result = agreement_with_shap(recommender, view, explanation.part("item_tokens"), MAX_EVALS)
        agreement.append({"user_id": user_id, "item_id": item_id, "spearman": result["spearman"],
                          "shap_partition_seconds": result["seconds"], "ig_joint_seconds": result["ig_seconds"]})
        print(f"  SHAP Partition ({MAX_EVALS} evals) {result['seconds']:.2f} s vs IG joint run "
              f"{result['ig_seconds']:.2f} s; Spearman {result['spearman']}", flush=True)

    full = [r for r in rows if r["full"]]
    return {
        "model": str(model_dir), "checkpoint_id": recommender.checkpoint_id, "items": len(recommender.item_ids),
        "pairs": len(rows), "n_steps": STEPS,
        "summary": {
            "full_explanation_seconds_median": median(r["seconds"] for r in full),
            "full_explanation_stage_seconds_median": {
                stage: median(r["timing"].get(stage, 0.0) for r in full)
                for stage in ("view", "integrated_gradients", "shap", "history_tokens")},
            "joint_ig_seconds_median": median(r["timing"]["integrated_gradients"] for r in rows),
            "median_relative_delta": median(r["relative_delta"] for r in rows),
            "max_relative_delta": max(r["relative_delta"] for r in rows),
            "median_abs_delta": median(abs(r["delta"]) for r in rows),
            "median_deletion_top3_drop": median(r["deletion_top3_drop"] for r in rows),
            "median_deletion_random3_drop": median(r["deletion_random3_drop"] for r in rows),
            "share_top3_beats_random3": float(np.mean([r["deletion_top3_drop"] > r["deletion_random3_drop"]
                                                       for r in rows])),
            "median_aopc_comprehensiveness": median(r["aopc_comprehensiveness"] for r in rows),
            "median_aopc_comprehensiveness_random": median(r["aopc_comprehensiveness_random"] for r in rows),
            "median_faithfulness_seconds": median(r["faithfulness_seconds"] for r in rows),
            "shap_partition_seconds_median": median(a["shap_partition_seconds"] for a in agreement),
            "ig_joint_seconds_median_same_items": median(a["ig_joint_seconds"] for a in agreement),
            "median_spearman_ig_vs_shap": median(a["spearman"] for a in agreement if a["spearman"] is not None),
        },
        "n_steps_sweep": sweep,
        "agreement": agreement,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.latency import limit_threads, machine

    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: demo/model, else runs/bench/demo, if present)")
    parser.add_argument("--pairs", type=int, default=50, help="(user, top-10 item) pairs measured")
    parser.add_argument("--full", type=int, default=5, help="pairs timed with the history drill-down as well")
    parser.add_argument("--sweep", type=int, default=5, help="pairs in the n_steps sweep")
    parser.add_argument("--agreement", type=int, default=3, help="items compared with SHAP Partition")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (see bench.latency.limit_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.pairs, args.threads) < 1 or min(args.full, args.sweep, args.agreement) < 0:
        print("error: --pairs and --threads must be positive, --full, --sweep and --agreement not negative",
              file=sys.stderr)
        return 2
    model_dir = args.model or next((path for path in DEFAULT_MODELS if (path / "config.json").exists()), None)
    if model_dir is None or not (model_dir / "config.json").exists():
        print(f"error: {model_dir or 'demo/model'}: not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()
    limit_threads(args.threads)
    print(f"explaining {args.pairs} pairs with {model_dir} on {args.threads} thread(s)", flush=True)
    result = run(model_dir, args.pairs, min(args.full, args.pairs), min(args.sweep, args.pairs),
                 min(args.agreement, args.pairs), args.seed)
    summary = {"benchmark": "explain", "machine": {**machine(), "torch_threads": torch.get_num_threads()},
               **result}
    s = result["summary"]
    print(f"full explanation (n_steps {STEPS}): median {s['full_explanation_seconds_median']:.2f} s "
          f"(stages {json.dumps({k: round(v, 3) for k, v in s['full_explanation_stage_seconds_median'].items()})})")
    print(f"IG delta / (f(x) - f(baseline)): median {s['median_relative_delta']:.2e}, "
          f"max {s['max_relative_delta']:.2e}")
    print(f"deletion: top-3 drop median {s['median_deletion_top3_drop']:+.4f} vs random-3 "
          f"{s['median_deletion_random3_drop']:+.4f} (top beats random on {s['share_top3_beats_random3']:.0%})")
    if s["shap_partition_seconds_median"] is not None:
        print(f"SHAP Partition ({MAX_EVALS} evals) median {s['shap_partition_seconds_median']:.2f} s vs IG joint run "
              f"{s['ig_joint_seconds_median_same_items']:.2f} s; Spearman median {s['median_spearman_ig_vs_shap']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
