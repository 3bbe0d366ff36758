"""Benchmark of the history part: do the past items an explanation credits move the score when they are removed?

For up to --users users with at least --min-items distinct past items, their top-1 item: each past-item
attribution below ranks the user's past items, and the test removes its top 3 (and top 1), every event on
them, the user state and history-derived behaviour features rebuilt (model.removal, as the What-if page does):

  * removal      the product's history part (explain.history): each past item's removal value, its marginal
                 contribution with 0, 1 or 2 other past items removed too, averaged;
  * shapley      Shapley values of the removal game with the words present (what What-if removes);
  * owen         Shapley values of the game the product's history total comes from: half with the words present,
                 half at their baseline;
  * gradients    Integrated Gradients over the history units' item vectors from zero, walked jointly with the
                 words and the ID vector (the history part before this benchmark's change);
  (shapley, owen and gradients on the first --candidates users only: they cost several times more)
  * recent, random, leave-one-out (the 3 whose removal alone lowers the score most): the bars to compare with.

Per attribution: the median drop of its top 3 and top 1, its share of leave-one-out's top-3 drop, and the share
of users whose item is still in their top 10 once its top 3 are removed. Also the seconds of the product's
history part (p50), and its additivity (|sum - (v(all) - v(none))|, max).

Cost, on the first --timed users (user + query, as bench/explain.py times a full explanation, IG at 50 steps, no
drill-down): a full explanation now, against the explanation before this history part in the same run (one joint
IG run over the words, the history units and the ID, and one SHAP run over the features: what explain() did).
Writes bench/results/history.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "history.json"


def gradient_values(recommender, context, view, game) -> np.ndarray:
    """IG over the history units' item vectors from zero, jointly with the words and ID (the old history part),
    summed per past item; items the user state does not read get 0."""
    from explain.gradients import PathSettings, device_of, integrate, text_baseline

    encoder, device = recommender.net.encoder, device_of(recommender)
    settings = PathSettings()
    values = np.zeros(len(game))
    if view.history_vectors is None:
        return values
    item = view.item_embeds.to(device)
    inputs = [item, view.history_vectors.to(device), view.id_vector.to(device)]
    baselines = [text_baseline(view, view.item_input_ids.to(device), item, encoder.word_embeddings,
                               settings.baseline, encoder.tokenizer.mask_token_id, view.item_template),
                 torch.zeros_like(inputs[1]), torch.zeros_like(inputs[2])]
    query = None if view.query_embeds is None else view.query_embeds.to(device)

    def forward(item_in, history_in, id_in):
        batch = item_in.shape[0]
        return view.forward(item_in, None if query is None else query.expand(batch, -1, -1), history_in, id_in)

    run = integrate(forward, inputs, baselines, settings)
    player_of = {item: p for p, player in enumerate(game.players) for item in player.item_index}
    for position, value in zip(view.history_index, run.attributions[1]):
        values[player_of[int(position)]] += value
    return values


def previous_explanation(recommender, user: str, query: str, item: str) -> None:
    """The explanation as it was computed before the history part was the removal game: one joint IG run over
    the words, the history units' item vectors and the ID vector, and one exact SHAP run over the features."""
    from explain.behaviour import BehaviourAttributor
    from explain.explanations import explained_context
    from model.serving import score_view

    context = explained_context(recommender, user, query, None)
    view = score_view(recommender, context, int(recommender.item_positions([item])[0]))
    gradient_values(recommender, context, view, _Units(view))
    BehaviourAttributor().attribute(recommender, context, view)


class _Units:
    """The history units of a view as one-item players, for gradient_values."""

    def __init__(self, view) -> None:
        self.players = [type("P", (), {"item_index": (int(p),)})() for p in view.history_index]

    def __len__(self) -> int:
        return len(self.players)


def timings(recommender, users: list[str], repeats: int = 1) -> dict:
    from bench.explain import query_for
    from explain import explain

    now, before = [], []
    for user in users:
        query = query_for(recommender, user)
        item = recommender.recommend(user_id=user, query=query, k=1)[0].item_id
        for _ in range(repeats):
            started = time.perf_counter()
            previous_explanation(recommender, user, query, item)
            before.append(time.perf_counter() - started)
            started = time.perf_counter()
            explain(recommender, item, user_id=user, query=query, drill_down=0)
            now.append(time.perf_counter() - started)
    p50_now, p50_before = statistics.median(now), statistics.median(before)
    return {"pairs": len(users), "full_explanation_p50": p50_now, "full_explanation_p90": float(np.quantile(now, 0.9)),
            "previous_explanation_p50": p50_before, "ratio_p50": p50_now / p50_before}


def run(model: Path, n_users: int, min_items: int, seed: int, out: Path, timed: int = 30,
        permutations: int = 16, candidates: int = 40) -> dict:
    from explain.explanations import explained_context
    from explain.faithfulness import history_measures, still_ranked
    from explain.history import HistoryAttributor, shapley_values
    from model.checkpoint import load
    from model.serving import score_view

    recommender = load(model)
    rng = np.random.default_rng(seed)
    users = [str(u) for u in rng.permutation(np.asarray(recommender.user_ids))]
    rows, seconds, gaps = [], [], []
    for user in users:
        if len(rows) >= n_users:
            break
        if len(np.unique(recommender.dataset.user_events(user)["item_id"])) < min_items:
            continue
        item = recommender.recommend(user_id=user, k=1)[0].item_id
        context = explained_context(recommender, user, None, None)
        position = int(recommender.item_positions([item])[0])
        view = score_view(recommender, context, position)
        attributor = HistoryAttributor()
        started = time.perf_counter()
        (part,) = attributor.attribute(recommender, context, view)
        seconds.append(time.perf_counter() - started)
        gaps.append(abs(part.completeness_gap))
        game, owen_game = attributor.game(recommender, context, view)
        index = {tuple(player.item_ids): p for p, player in enumerate(game.players)}
        removal = np.zeros(len(game))
        for value, detail in zip(part.values, part.details):
            if detail["items"]:  # the shared entry is no past item's
                removal[index[tuple(detail["items"])]] = value
        events = recommender.dataset.user_events(user)
        row = {"user": user, "item": item, "players": len(game)}
        compared = [("removal", removal)]
        if len(rows) < candidates:  # the other attributions, on the first users only: they cost more
            compared += [("shapley", shapley_values(game.scores, len(game), permutations=permutations)[0]),
                         ("owen", shapley_values(owen_game, len(game), permutations=permutations)[0]),
                         ("gradients", gradient_values(recommender, context, view, game))]
        for name, values in compared:
            bars = name == "removal"  # the random, recent and leave-one-out bars are the same for every values
            measures = history_measures(recommender, game, values, events=events if bars else None, seed=seed,
                                        random_draws=5 if bars else 1)
            row[name] = {key: measures[f"history_{key}_drop"] for key in ("top3", "top1")}
            credited = [int(p) for p in np.argsort(-values, kind="stable") if values[p] > 0][:3]
            row[name]["top3_top10"] = (measures["history_top3_top10"] if bars
                                       else still_ranked(recommender, game, events, credited))
            if name == "removal":  # the bars are the same for every attribution
                row.update({key: measures[f"history_{key}_drop"] for key in ("random3", "recent3", "recent1",
                                                                             "loo3", "loo1")})
                row.update({f"{key}_top10": measures[f"history_{key}_top10"] for key in ("random3", "recent3",
                                                                                         "loo3")})
        rows.append(row)
        print(f"{len(rows):4d} {user}: players {len(game):3d}  removal top3 {row['removal']['top3']:+.3f}  "
              f"loo3 {row['loo3']:+.3f}  recent3 {row['recent3']:+.3f}  ({seconds[-1]:.2f} s)", flush=True)
    summary = summarise(rows, seconds, gaps)
    if timed:
        explain_once = [r["user"] for r in rows[:1]]
        timings(recommender, explain_once)  # the first explanation loads SHAP and warms the caches: not timed
        summary["cost"] = timings(recommender, [r["user"] for r in rows[:timed]])
    result = {"model": str(model), "checkpoint_id": recommender.checkpoint_id, "users": len(rows),
              "min_items": min_items, "seed": seed, "torch_threads": torch.get_num_threads(), "summary": summary,
              "rows": rows}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(summary, indent=1))
    return result


def summarise(rows: list[dict], seconds: list[float], gaps: list[float]) -> dict:
    def median(values) -> float | None:
        values = [v for v in values if v is not None]
        return float(statistics.median(values)) if values else None

    def share(values) -> float | None:
        values = [float(v) for v in values if v is not None]
        return float(np.mean(values)) if values else None

    summary = {"bars": {
        "loo3_drop": median(r["loo3"] for r in rows), "loo1_drop": median(r["loo1"] for r in rows),
        "recent3_drop": median(r["recent3"] for r in rows), "recent1_drop": median(r["recent1"] for r in rows),
        "random3_drop": median(r["random3"] for r in rows),
        "loo3_top10": share(r["loo3_top10"] for r in rows), "recent3_top10": share(r["recent3_top10"] for r in rows),
        "random3_top10": share(r["random3_top10"] for r in rows)},
        "history_seconds_p50": median(seconds), "additivity_gap_max": max(gaps, default=None)}
    for name in ("removal", "shapley", "owen", "gradients"):
        compared = [r for r in rows if name in r]
        loo3 = median(r["loo3"] for r in compared)  # on the same users: the others are measured on fewer
        top3 = median(r[name]["top3"] for r in compared)
        summary[name] = {"users": len(compared), "top3_drop": top3,
                         "top1_drop": median(r[name]["top1"] for r in compared),
                         "top3_share_of_loo3": None if not loo3 else top3 / loo3,
                         "recent1_drop": median(r["recent1"] for r in compared),
                         "top3_top10": share(r[name]["top3_top10"] for r in compared),
                         "loo3_top10": share(r["loo3_top10"] for r in compared)}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "model")
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--min-items", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timed", type=int, default=30, help="users whose full explanation is timed (0: none)")
    parser.add_argument("--candidates", type=int, default=40,
                        help="users on whom the other attributions are compared too (the first ones)")
    parser.add_argument("--permutations", type=int, default=16,
                        help="random orders for the Shapley candidates past 8 past items")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    run(args.model, args.users, args.min_items, args.seed, args.out, args.timed, args.permutations,
        args.candidates)
    return 0


if __name__ == "__main__":
    sys.exit(main())
