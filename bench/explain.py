"""Benchmark of explanations: cost, IG convergence and faithfulness over sampled (user, top-10 item) pairs.

For N users drawn at random, one item drawn from their top 10:
  * IG's convergence delta relative to what it explains, |delta| / |f(x) - f(baseline)|, at n_steps=50 for all
    pairs and for a sweep of n_steps on the first --sweep pairs; parts adding up to the score; SHAP additivity;
  * deletion_top3_drop against deletion_random3_drop (explain.faithfulness) on every pair;
  * seconds for one full explanation on the first --full pairs: user + query (a query made of the first words
    of the user's latest item), IG at n_steps=50 over item and query tokens, history units and ID jointly, and
    SHAP over the behaviour features; then the history drill-down (words of the top 3 history items) apart;
  * SHAP Partition (max_evals 500) against IG on the same item's tokens, on the first --agreement pairs (150:
    fewer cannot tell the two apart): seconds, Spearman agreement and each method's own deletion_top3_drop,
    deletion_top3_words_drop (whole words) and aopc_comprehensiveness (the deletion curve to 10 tokens), for IG
    at n_steps=50 and at --fast-steps, compared item by item;
    and, as the reference a forward pass per token sets, leave-one-out (each token's own removal effect,
    explain.faithfulness.leave_one_out) by the same test.
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
# The deletion measures compared with SHAP Partition item by item (higher: the ranking is the more faithful):
# unit -> (the row's measure, how it is printed).
MEASURES = {"tokens": ("deletion_top3_drop", "top-3 tokens removed, drop"),
            "words": ("deletion_top3_words_drop", "top-3 whole words removed, drop"),
            "curve": ("aopc_comprehensiveness", "deletion curve, AOPC comprehensiveness over k = 1..10")}


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


def mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def paired_p(pairs) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired drops (ties dropped); None when there is nothing to test."""
    from scipy.stats import wilcoxon

    differences = [a - b for a, b in pairs if a != b]
    if len(differences) < 2:
        return None
    return float(wilcoxon(differences).pvalue)


def share(flags) -> float | None:
    flags = list(flags)
    return float(np.mean(flags)) if flags else None


def signed(value: float | None, places: int = 4) -> str:
    """A score drop as printed; "none" where SHAP Partition gave no comparison."""
    return "none" if value is None else f"{value:+.{places}f}"


def query_for(recommender, user_id: str) -> str:
    """A query a shopper might type: the first three words of the title of the user's latest item."""
    latest = int(recommender.histories[user_id].item_index[-1])
    return " ".join(str(recommender.items.iloc[latest].title).split()[:3])


def additivity(explanation) -> float:
    """|base_value + sum of the parts - score| relative to max(1, |score|), gap included (explain.base)."""
    total = explanation.base_value + sum(p.total for p in explanation.parts if p.in_total)
    return abs(total - explanation.completeness_gap - explanation.score) / max(1.0, abs(explanation.score))


def run(model_dir: Path, n_pairs: int, n_full: int, n_sweep: int, n_agreement: int, seed: int, device: str,
        fast_steps: int) -> dict:
    from explain import explain, faithfulness
    from explain.faithfulness import agreement_with_shap, leave_one_out, removal_curves
    from model.checkpoint import load
    from model.serving import score_view

    recommender = load(model_dir, device=device)
    pairs = sample_pairs(recommender, n_pairs, seed)
    explain(recommender, pairs[0][1], user_id=pairs[0][0], n_steps=2)  # first calls compile SHAP's numba code
    rows = []
    for i, (user_id, item_id) in enumerate(pairs):
        started = time.perf_counter()
        explanation = explain(recommender, item_id, user_id=user_id, n_steps=STEPS, drill_down=0)
        seconds = time.perf_counter() - started
        measured = faithfulness(recommender, explanation)
        rows.append({"user_id": user_id, "item_id": item_id, "score": explanation.score,
                     "base_value": explanation.base_value, "seconds": seconds, "timing": explanation.timing,
                     "delta": explanation.part("item_tokens").completeness_gap,
                     "relative_delta": relative_delta(explanation), "additivity": additivity(explanation),
                     "shap_additivity": abs(explanation.part("behaviour").completeness_gap),
                     "flags": list(explanation.flags), "item_tokens": len(explanation.part("item_tokens")),
                     "history_units": len(explanation.part("history")),
                     "deletion_top3_drop": measured["deletion_top3_drop"],
                     "deletion_random3_drop": measured["deletion_random3_drop"],
                     "aopc_comprehensiveness": measured["aopc_comprehensiveness"],
                     "aopc_comprehensiveness_random": measured["aopc_comprehensiveness_random"],
                     "aopc_sufficiency": measured["aopc_sufficiency"],
                     "aopc_sufficiency_random": measured["aopc_sufficiency_random"],
                     "faithfulness_seconds": measured["seconds"]})
        print(f"  {i + 1:3d}/{len(pairs)} {user_id} {item_id}: {seconds:5.2f} s, delta/moved "
              f"{rows[-1]['relative_delta']:.1e}, top-3 drop {measured['deletion_top3_drop']:+.3f} vs random "
              f"{measured['deletion_random3_drop']:+.3f}", flush=True)

    full = []
    for user_id, item_id in pairs[:n_full]:
        query = query_for(recommender, user_id)
        started = time.perf_counter()
        explanation = explain(recommender, item_id, user_id=user_id, query=query, n_steps=STEPS, drill_down=0)
        seconds = time.perf_counter() - started
        started = time.perf_counter()
        drilled = explain(recommender, item_id, user_id=user_id, query=query, n_steps=STEPS, drill_down=3)
        full.append({"user_id": user_id, "item_id": item_id, "query": query, "seconds": seconds,
                     "timing": explanation.timing, "query_tokens": len(explanation.part("query_tokens")),
                     "relative_delta": relative_delta(explanation), "additivity": additivity(explanation),
                     "with_drill_down_seconds": time.perf_counter() - started,
                     "drill_down_seconds": drilled.timing.get("history_tokens", 0.0)})
        print(f"  full ({query!r}): {seconds:.2f} s; with the drill-down {full[-1]['with_drill_down_seconds']:.2f} s",
              flush=True)

    sweep = {}
    for n_steps in SWEEP if n_sweep > 0 else ():  # --sweep 0 skips the sweep
        runs = [explain(recommender, item_id, user_id=user_id, n_steps=n_steps, drill_down=0)
                for user_id, item_id in pairs[:n_sweep]]
        sweep[str(n_steps)] = {"median_relative_delta": median(relative_delta(e) for e in runs),
                               "max_relative_delta": max(relative_delta(e) for e in runs),
                               "median_ig_seconds": median(e.timing["integrated_gradients"] for e in runs)}
        print(f"  n_steps {n_steps:4d}: median delta/moved {sweep[str(n_steps)]['median_relative_delta']:.1e}, "
              f"IG {sweep[str(n_steps)]['median_ig_seconds']:.2f} s", flush=True)

    agreement = []
    for user_id, item_id in pairs[:n_agreement]:
        context = recommender.context(user_id)
        view = score_view(recommender, context, int(recommender.item_positions([item_id])[0]))
        row = {"user_id": user_id, "item_id": item_id}
        for label, n_steps in (("ig", STEPS), ("ig_fast", fast_steps)):
            explanation = explain(recommender, item_id, user_id=user_id, n_steps=n_steps, drill_down=0)
            part = explanation.part("item_tokens")
            curves = removal_curves(recommender, view, part, explanation.score, random_draws=1)
            row.update({f"{label}_n_steps": n_steps, f"{label}_seconds": part.seconds,
                        f"{label}_relative_delta": relative_delta(explanation),
                        f"{label}_deletion_top3_drop": curves["deletion_top3_drop"],
                        f"{label}_deletion_top3_words_drop": curves["deletion_top3_words_drop"],
                        f"{label}_aopc_comprehensiveness": curves["aopc_comprehensiveness"]})
        result = agreement_with_shap(recommender, view, part, MAX_EVALS)
        row.update({"spearman": result["spearman"], "shap_partition_seconds": result["seconds"],
                    "shap_deletion_top3_drop": result["deletion_top3_drop"],
                    "shap_deletion_top3_words_drop": result["deletion_top3_words_drop"],
                    "shap_aopc_comprehensiveness": result["aopc_comprehensiveness"],
                    "shap_completeness_gap": result["shap_completeness_gap"], "shap_note": result["note"]})
        own = leave_one_out(recommender, view, part)  # the reference: each token's own removal, measured
        row.update({"loo_seconds": own["seconds"], "loo_deletion_top3_drop": own["deletion_top3_drop"],
                    "loo_deletion_top3_words_drop": own["deletion_top3_words_drop"],
                    "loo_aopc_comprehensiveness": own["aopc_comprehensiveness"]})
        agreement.append(row)
        print(f"  SHAP Partition ({MAX_EVALS} evals) {result['seconds']:.2f} s, top-3 drop "
              f"{signed(result['deletion_top3_drop'], 3)} | IG {STEPS} steps {row['ig_seconds']:.2f} s, "
              f"{row['ig_deletion_top3_drop']:+.3f} | IG {fast_steps} steps {row['ig_fast_seconds']:.2f} s, "
              f"{row['ig_fast_deletion_top3_drop']:+.3f} | leave-one-out {row['loo_seconds']:.2f} s, "
              f"{signed(row['loo_deletion_top3_drop'], 3)}; Spearman {result['spearman']}"
              + (f" ({result['note']})" if result["note"] else ""), flush=True)  # e.g. a text not given back

    def ratio(key: str) -> float | None:
        return median(a["shap_partition_seconds"] / a[key] for a in agreement if a[key] > 0)

    def versus(measure: str, method: str = "ig_fast") -> dict:
        """`method` against SHAP Partition item by item by a deletion `measure` (higher: its ranking is the better)."""
        compared = [(a[f"{method}_{measure}"], a[f"shap_{measure}"]) for a in agreement
                    if a[f"shap_{measure}"] is not None and a[f"{method}_{measure}"] is not None]
        return {"items": len(compared), f"median_{method}": median(m for m, _ in compared),
                "median_shap": median(s for _, s in compared), f"mean_{method}": mean(m for m, _ in compared),
                "mean_shap": mean(s for _, s in compared),
                f"share_{method}_at_least_shap": share(m >= s for m, s in compared),
                "wilcoxon_p": paired_p(compared)}

    deletion = {unit: versus(measure) for unit, (measure, _) in MEASURES.items()}
    tokens = deletion["tokens"]
    return {
        "model": str(model_dir), "checkpoint_id": recommender.checkpoint_id, "items": len(recommender.item_ids),
        "device": str(recommender.device), "pairs": len(rows), "n_steps": STEPS, "fast_steps": fast_steps,
        "summary": {
            "full_explanation_seconds_median": median(r["seconds"] for r in full),
            "full_explanation_seconds_p90": float(np.percentile([r["seconds"] for r in full], 90)) if full else None,
            "full_explanation_stage_seconds_median": {
                stage: median(r["timing"].get(stage, 0.0) for r in full)
                for stage in ("view", "integrated_gradients", "shap")},
            "full_with_drill_down_seconds_median": median(r["with_drill_down_seconds"] for r in full),
            "drill_down_seconds_median": median(r["drill_down_seconds"] for r in full),
            "user_mode_explanation_seconds_median": median(r["seconds"] for r in rows),
            "joint_ig_seconds_median": median(r["timing"]["integrated_gradients"] for r in rows),
            "median_relative_delta": median(r["relative_delta"] for r in rows),
            "max_relative_delta": max(r["relative_delta"] for r in rows),
            "median_abs_delta": median(abs(r["delta"]) for r in rows),
            "max_additivity_error": max(r["additivity"] for r in rows),
            "max_shap_additivity_error": max(r["shap_additivity"] for r in rows),
            "median_deletion_top3_drop": median(r["deletion_top3_drop"] for r in rows),
            "median_deletion_random3_drop": median(r["deletion_random3_drop"] for r in rows),
            "share_top3_beats_random3": float(np.mean([r["deletion_top3_drop"] > r["deletion_random3_drop"]
                                                       for r in rows])),
            "median_aopc_comprehensiveness": median(r["aopc_comprehensiveness"] for r in rows),
            "median_aopc_comprehensiveness_random": median(r["aopc_comprehensiveness_random"] for r in rows),
            "median_aopc_sufficiency": median(r["aopc_sufficiency"] for r in rows),
            "median_aopc_sufficiency_random": median(r["aopc_sufficiency_random"] for r in rows),
            "median_faithfulness_seconds": median(r["faithfulness_seconds"] for r in rows),
            "shap_partition_seconds_median": median(a["shap_partition_seconds"] for a in agreement),
            "ig_seconds_median_same_items": median(a["ig_seconds"] for a in agreement),
            "ig_fast_seconds_median_same_items": median(a["ig_fast_seconds"] for a in agreement),
            "speedup_ig_vs_shap_median": ratio("ig_seconds"),
            "speedup_ig_fast_vs_shap_median": ratio("ig_fast_seconds"),
            "shap_completeness_gap_abs_median": median(abs(a["shap_completeness_gap"]) for a in agreement
                                                       if a["shap_completeness_gap"] is not None),
            "shap_deletion_top3_drop_median": median(a["shap_deletion_top3_drop"] for a in agreement
                                                     if a["shap_deletion_top3_drop"] is not None),
            "ig_deletion_top3_drop_median_same_items": median(a["ig_deletion_top3_drop"] for a in agreement),
            "ig_fast_deletion_top3_drop_median_same_items": median(a["ig_fast_deletion_top3_drop"] for a in agreement),
            "ig_fast_median_relative_delta": median(a["ig_fast_relative_delta"] for a in agreement),
            # Paired, item by item, on the items SHAP compared: the token figures under their earlier names too.
            "share_ig_fast_at_least_shap": tokens["share_ig_fast_at_least_shap"],
            "mean_deletion_top3_drop_ig_fast_vs_shap": [tokens["mean_ig_fast"], tokens["mean_shap"]],
            "wilcoxon_p_ig_fast_vs_shap": tokens["wilcoxon_p"],
            "deletion_ig_fast_vs_shap": deletion,
            # The reference a forward pass per token sets: each token's own removal effect, ranked.
            "leave_one_out_seconds_median": median(a["loo_seconds"] for a in agreement),
            "speedup_leave_one_out_vs_shap_median": ratio("loo_seconds"),
            "deletion_leave_one_out_vs_shap": {unit: versus(measure, "loo") for unit, (measure, _) in MEASURES.items()},
            "median_spearman_ig_vs_shap": median(a["spearman"] for a in agreement if a["spearman"] is not None),
        },
        "n_steps_sweep": sweep,
        "full": full,
        "agreement": agreement,
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> int:
    from bench.latency import limit_threads, machine
    from explain.gradients import path_threads

    parser = argparse.ArgumentParser(prog="python -m bench.explain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: demo/model, else runs/bench/demo, if present)")
    parser.add_argument("--pairs", type=int, default=200, help="(user, top-10 item) pairs measured")
    parser.add_argument("--full", type=int, default=20, help="pairs timed as full user + query explanations")
    parser.add_argument("--sweep", type=int, default=10, help="pairs in the n_steps sweep")
    parser.add_argument("--agreement", type=int, default=150,
                        help="items compared with SHAP Partition (a top-3 drop varies a lot from item to item: "
                             "40 items cannot tell a median gap of 0.1; about 12 minutes on a 2-core CPU)")
    parser.add_argument("--fast-steps", type=int, default=16,
                        help="n_steps of the second IG compared with SHAP Partition (default 16)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for serving (see bench.latency.limit_threads); path runs use "
                             "WHYREC_PATH_THREADS (default: every core, at most 8)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.pairs, args.threads, args.fast_steps) < 1 or min(args.full, args.sweep, args.agreement) < 0:
        print("error: --pairs, --threads and --fast-steps must be positive, --full, --sweep and --agreement not "
              "negative", file=sys.stderr)
        return 2
    model_dir = args.model or next((path for path in DEFAULT_MODELS if (path / "config.json").exists()), None)
    if model_dir is None or not (model_dir / "config.json").exists():
        print(f"error: {model_dir or 'demo/model'}: not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging

    logging.disable_progress_bar()
    limit_threads(args.threads)
    print(f"explaining {args.pairs} pairs with {model_dir} on {args.device}, {args.threads} serving thread(s), "
          f"{path_threads()} path thread(s)", flush=True)
    result = run(model_dir, args.pairs, min(args.full, args.pairs), min(args.sweep, args.pairs),
                 min(args.agreement, args.pairs), args.seed, args.device, args.fast_steps)
    summary = {"benchmark": "explain",
               "machine": {**machine(result["device"]), "torch_threads": torch.get_num_threads(),
                           "path_threads": path_threads()},
               **result}
    s = result["summary"]
    if s["full_explanation_seconds_median"] is not None:
        print(f"full explanation, user + query (n_steps {STEPS}): median {s['full_explanation_seconds_median']:.2f} s, "
              f"p90 {s['full_explanation_seconds_p90']:.2f} s (stages "
              f"{json.dumps({k: round(v, 3) for k, v in s['full_explanation_stage_seconds_median'].items()})}); "
              f"with the history drill-down {s['full_with_drill_down_seconds_median']:.2f} s")
    print(f"IG delta / (f(x) - f(baseline)): median {s['median_relative_delta']:.2e}, "
          f"max {s['max_relative_delta']:.2e}; parts add up within {s['max_additivity_error']:.1e} (relative); "
          f"SHAP additivity within {s['max_shap_additivity_error']:.1e}")
    print(f"deletion: top-3 drop median {s['median_deletion_top3_drop']:+.4f} vs random-3 "
          f"{s['median_deletion_random3_drop']:+.4f} (top beats random on {s['share_top3_beats_random3']:.0%})")
    if s["shap_partition_seconds_median"] is not None:
        print(f"SHAP Partition ({MAX_EVALS} evals) median {s['shap_partition_seconds_median']:.2f} s, top-3 drop "
              f"{signed(s['shap_deletion_top3_drop_median'])}; "
              f"IG {STEPS} steps {s['ig_seconds_median_same_items']:.2f} s "
              f"({s['speedup_ig_vs_shap_median']:.1f}x), {s['ig_deletion_top3_drop_median_same_items']:+.4f}; "
              f"IG {args.fast_steps} steps {s['ig_fast_seconds_median_same_items']:.2f} s "
              f"({s['speedup_ig_fast_vs_shap_median']:.1f}x), "
              f"{s['ig_fast_deletion_top3_drop_median_same_items']:+.4f}, delta/moved "
              f"{s['ig_fast_median_relative_delta']:.1e}; Spearman median {s['median_spearman_ig_vs_shap']}; SHAP's "
              f"values left on tokens that never move, median |gap| {s['shap_completeness_gap_abs_median']}")
        for unit, v in s["deletion_ig_fast_vs_shap"].items():  # top-3 tokens, top-3 whole words, the whole curve
            if v["items"]:
                print(f"item by item, {MEASURES[unit][1]}: IG {args.fast_steps} steps at least as high as SHAP on "
                      f"{v['share_ig_fast_at_least_shap']:.0%}; median IG {signed(v['median_ig_fast'])}, SHAP "
                      f"{signed(v['median_shap'])}; mean IG {v['mean_ig_fast']:+.4f}, SHAP {v['mean_shap']:+.4f}; "
                      f"paired Wilcoxon p {v['wilcoxon_p']}")
        for unit, v in s["deletion_leave_one_out_vs_shap"].items():
            if v["items"]:
                print(f"reference, leave-one-out ({s['leave_one_out_seconds_median']:.2f} s, "
                      f"{s['speedup_leave_one_out_vs_shap_median']:.1f}x), {MEASURES[unit][1]}: at least as high as "
                      f"SHAP on {v['share_loo_at_least_shap']:.0%}; median {signed(v['median_loo'])} vs SHAP "
                      f"{signed(v['median_shap'])}; paired Wilcoxon p {v['wilcoxon_p']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
