"""Do the explanations find the demo shop's planted causes? Token and feature recovery against ground truth.

For users of the demo shop and items in their top 10 that carry one of the user's planted text tastes (the
item's brand is one of the user's brands, or its title holds one of their attribute words), the check is
whether one of those taste words is among the item's top-3 words by Integrated Gradients. For users whose
planted cause mix is led by a behaviour taste (price), the check is whether the price feature is the top
SHAP feature of their top items. Writes bench/results/explain_truth.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from data.io import load_dataset
from explain import explain
from model.checkpoint import load

RESULTS = Path(__file__).resolve().parent / "results"


def taste_words(truth: dict) -> set[str]:
    return {w.lower() for w in [*truth["brands"], *truth["attributes"]]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("demo/model"))
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recommender = load(args.model, data=args.data)
    truth = load_dataset(args.data).ground_truth
    rng = np.random.default_rng(args.seed)
    users = [u for u in recommender.user_ids if u in truth["users"] and len(recommender.histories[u])]
    rng.shuffle(users)
    started = time.perf_counter()
    token_hits, token_pairs, price_hits, price_pairs = 0, 0, 0, 0
    for user in users:
        if token_pairs >= args.pairs and price_pairs >= args.pairs // 3:
            break
        planted = truth["users"][user]
        words = taste_words(planted)
        mix = planted.get("cause_mix", {})
        price_led = bool(mix) and max(mix, key=mix.get) == "price"
        for rec in recommender.recommend(user_id=user, k=10):
            text = f"{rec.brand or ''} {rec.title}".lower().replace(",", " ").split()
            carries = bool(words & set(text))
            if not (carries and token_pairs < args.pairs) and not (price_led and price_pairs < args.pairs // 3):
                continue
            explanation = explain(recommender, rec.item_id, user_id=user, n_steps=32, drill_down=0)
            if carries and token_pairs < args.pairs:
                top3 = [name.lower() for name, value, _ in explanation.part("item_tokens").words().top(3) if value > 0]
                token_pairs += 1
                token_hits += bool(words & set(top3))
            if price_led and price_pairs < args.pairs // 3:
                behaviour = explanation.part("behaviour")
                top = behaviour.top(1)[0][2].get("feature") if behaviour is not None and len(behaviour) else None
                price_pairs += 1
                price_hits += top == "price_fit"
            break  # one item per user keeps the sample spread over users
    result = {
        "benchmark": "explain_truth", "checkpoint_id": recommender.checkpoint_id, "n_steps": 32,
        "token_pairs": token_pairs, "token_recovery_top3": token_hits / max(token_pairs, 1),
        "price_led_pairs": price_pairs, "price_top_shap_feature": price_hits / max(price_pairs, 1),
        "seconds": time.perf_counter() - started,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "explain_truth.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
