"""Does the model recover the demo shop's planted tastes? Share of each user's top-10 that carries them.

For every user of the demo shop, the top-10 (history excluded) of the model and of popularity are checked
against the user's planted ground truth: an item "carries a taste" when its brand is one of the user's
brands or its title holds one of the user's attribute words. Written to bench/results/ground_truth.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from data.io import load_dataset
from model.baselines import Popularity
from model.checkpoint import load
from model.evaluate import model_scorer
from model.retrieval import top_k

RESULTS = Path(__file__).resolve().parent / "results"


def carries_taste(items, positions, truth: dict) -> np.ndarray:
    brands = set(truth["brands"])
    words = {w.lower() for w in truth["attributes"]}
    rows = items.iloc[positions]
    return np.array([(b in brands) or bool(words & set(str(t).lower().replace(",", " ").split()))
                     for b, t in zip(rows["brand"], rows["title"])])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo/model"))
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--users", type=int, default=500)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recommender = load(args.model, data=args.data)
    truth = load_dataset(args.data).ground_truth
    if not truth:
        raise SystemExit(f"{args.data} has no ground_truth.json: generate it with `python -m data generate`")
    users = [u for u in recommender.user_ids if u in truth["users"]][: args.users]
    histories = [recommender.histories[u] for u in users]
    moment = int(recommender.dataset.events["timestamp"].max().value) + 1
    popularity = Popularity(recommender.dataset.events, recommender.dataset.item_position)
    scorers = {"model": model_scorer(recommender, with_behaviour=True), "popularity": popularity}
    started = time.perf_counter()
    shares = {}
    for name, scorer in scorers.items():
        hits = []
        for start in range(0, len(users), 128):
            chunk = slice(start, start + 128)
            scores = scorer(users[chunk], histories[chunk], [moment] * len(users[chunk]))
            for user, history, row in zip(users[chunk], histories[chunk], scores):
                best = top_k(row, 10, exclude=history.item_index)
                hits.append(carries_taste(recommender.items, best, truth["users"][user]).mean())
        shares[name] = float(np.mean(hits))
    catalog = np.mean([carries_taste(recommender.items, np.arange(len(recommender.items)), truth["users"][u]).mean()
                       for u in users])
    result = {"benchmark": "ground_truth", "metric": "share of top-10 items carrying one of the user's planted "
              "brands or attribute words (history excluded)", "users": len(users), "model": shares["model"],
              "popularity": shares["popularity"], "catalog_share": float(catalog),
              "lift_over_popularity": shares["model"] / max(shares["popularity"], 1e-9),
              "checkpoint_id": recommender.checkpoint_id, "seconds": time.perf_counter() - started}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ground_truth.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
