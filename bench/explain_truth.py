"""Do the explanations find the demo shop's planted causes? Token and feature recovery against ground truth.

The demo shop (data.synthetic) records why every event happened: its cause (brand, attribute, category, price,
recency, popularity, noise) and, for a text taste, the word it fired on. Three checks, each against chance:

  tokens, held-out    views late in a user's timeline whose planted cause is a brand or attribute taste, on an
                      item the user had not touched before: the score of that item at that moment, explained from
                      the events before it alone (explain(..., at=)); a hit when the planted word is among the
                      item's top-3 terms, counted as the Insights page counts driving words (explain.insights.
                      item_words: a word's occurrences summed, positive values, no punctuation and no "Brand:" or
                      "Category:" field labels). Chance: 3 / the item's positive terms.
  tokens, top-10      (user, item) pairs of the users' current top 10 where the item carries one of the user's
                      planted brand or attribute words: a hit when one of them is among the top-3 terms.
  behaviour, held-out views whose planted cause is a behaviour, as many of each: price (the item is priced
                      around the user's price point) -> price_affinity; recency (back to a recently viewed or carted
                      item, or the last category) -> user_item_views, user_item_carts or days_since_category;
                      popularity -> item_popularity.
                      A hit when the top SHAP feature (largest |value|) is the cause's feature; reported too for
                      the feature that raised the score most. Chance: the share of features that would count.
                      Reported as well for the pairs with a single planted cause: items outside the user's
                      favourite categories that carry none of the user's brands or attribute words. A deal on a
                      favourite shelf, or a return to a favourite brand, has a taste cause too, and a taste
                      feature explaining it is not wrong.
  history, returns    views late in a user's timeline whose planted cause is a return to a past item (an
                      abandoned cart or a recent view; the ground truth names the item): a hit when that past item
                      is the one the history part credits most. Chance: 1 / the number of past items.

Writes bench/results/explain_truth.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from explain.gradients import BASELINES

RESULTS = Path(__file__).resolve().parent / "results"
CAUSE_FEATURES = {
    "price": ("price_affinity",),
    "recency": ("user_item_views", "user_item_carts", "days_since_category"),
    "popularity": ("item_popularity",),
}
TEXT_CAUSES = ("brand", "attribute")
LATE = 0.5  # held-out events come from the later half of a user's timeline, where the history says something


def top_terms(explanation, n: int = 3) -> tuple[list[str], int]:
    """The item's n strongest positive terms, as the Insights page counts driving words, and how many it has."""
    from explain.insights import item_words

    every = item_words(explanation, top=10**6)  # positive terms only: chance is measured generously
    return [name for name, _ in every[:n]], max(len(every), 1)


def top_features(explanation) -> tuple[str | None, str | None]:
    """The top SHAP feature by |value| (as SHAP's plots rank them), and the one that raised the score most."""
    behaviour = explanation.features()
    if behaviour is None or not len(behaviour):
        return None, None
    raised = behaviour.details[int(np.argmax(behaviour.values))]["feature"] if max(behaviour.values) > 0 else None
    return behaviour.top(1)[0][2].get("feature"), raised


def planted_words(taste: dict) -> set[str]:
    """A user's planted brands and attribute words, case-folded."""
    return {w.casefold() for w in [*taste["brands"], *taste["attributes"]]}


def title_words(item) -> set[str]:
    """The case-folded words of an item's brand and title (anything with .brand and .title)."""
    return set(f"{item.brand or ''} {item.title}".casefold().replace(",", " ").split())


def carries_taste(item, taste: dict) -> bool:
    """Whether an item (a row of dataset.items) is in one of the user's planted categories or carries one of the
    user's planted brands or attribute words."""
    return item.category in taste["categories"] or bool(title_words(item) & planted_words(taste))


def held_out_views(dataset, causes: pd.DataFrame, wanted: tuple[str, ...], rng, first_touch: bool) -> pd.DataFrame:
    """Views from the later half of each user's timeline whose planted cause is one of `wanted`, shuffled."""
    events = dataset.events.assign(cause=causes["cause"].to_numpy(), token=causes["token"].to_numpy())
    events = events.sort_values(["user_id", "timestamp"], kind="stable")
    order = events.groupby("user_id", sort=False).cumcount()
    size = events.groupby("user_id", sort=False)["item_id"].transform("size")
    late = order >= LATE * size
    keep = late & (events["event"].astype(str) == "view") & events["cause"].isin(wanted)
    if first_touch:  # the user meets the item here: nothing about it is in the history yet
        keep &= ~events.duplicated(["user_id", "item_id"], keep="first")
    chosen = events[keep]
    chosen = chosen.iloc[rng.permutation(len(chosen))]
    return chosen.drop_duplicates("user_id")  # one event per user keeps the sample spread over users


def main(argv=None) -> int:
    from data.io import load_dataset
    from data.synthetic import event_causes
    from explain import explain
    from model.checkpoint import load

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("demo/model"))
    parser.add_argument("--data", type=Path, default=Path("demo/data"))
    parser.add_argument("--pairs", type=int, default=150, help="pairs per check (60 leave about ±12 points of noise)")
    parser.add_argument("--n-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--baseline", choices=tuple(BASELINES), default="template",
                        help="the IG baseline of the token checks (default: template)")
    parser.add_argument("--checks", default="tokens,behaviour,returns", help="which checks to run, comma-separated")
    parser.add_argument("--out", type=Path, default=RESULTS / "explain_truth.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    recommender = load(args.model, data=args.data, device=args.device)
    dataset = load_dataset(args.data)
    truth, causes = dataset.ground_truth, event_causes(dataset)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    def explained(user, item, at=None):
        return explain(recommender, item, user_id=user, n_steps=args.n_steps, drill_down=0, at=at,
                       baseline=args.baseline)

    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    if not checks or checks - {"tokens", "behaviour", "returns"}:
        parser.error(f"--checks {args.checks!r}: name any of tokens, behaviour, returns")
    token_pairs = args.pairs if "tokens" in checks else 0
    held_tokens = []
    for row in held_out_views(dataset, causes, TEXT_CAUSES, rng, first_touch=True).head(token_pairs).itertuples():
        top, n_terms = top_terms(explained(row.user_id, row.item_id, row.timestamp))
        held_tokens.append({"user_id": row.user_id, "item_id": row.item_id, "cause": row.cause, "token": row.token,
                            "top3": top, "hit": str(row.token).casefold() in top, "chance": min(1.0, 3 / n_terms)})

    top10 = []
    users = [u for u in recommender.user_ids if u in truth["users"] and len(recommender.histories[u])]
    for user in rng.permutation(users):
        if len(top10) >= token_pairs:
            break
        words = planted_words(truth["users"][user])
        for rec in recommender.recommend(user_id=user, k=10):
            text = title_words(rec)
            if words & text:
                top, n_terms = top_terms(explained(user, rec.item_id))
                top10.append({"user_id": user, "item_id": rec.item_id, "tastes": sorted(words & text), "top3": top,
                              "hit": bool(words & set(top)),
                              "chance": min(1.0, 3 * len(words & text) / n_terms)})
                break

    behaviour = []
    n_features = len(recommender.feature_names)
    per_cause = max(1, args.pairs // len(CAUSE_FEATURES)) if "behaviour" in checks else 0
    behaviour_views = pd.concat([held_out_views(dataset, causes, (cause,), rng, first_touch=False).head(per_cause)
                                 for cause in CAUSE_FEATURES])
    items = dataset.items.set_index("item_id")
    for row in behaviour_views.itertuples():
        feature, raised = top_features(explained(row.user_id, row.item_id, row.timestamp))
        expected = CAUSE_FEATURES[row.cause]
        behaviour.append({"user_id": row.user_id, "item_id": row.item_id, "cause": row.cause, "top": feature,
                          "hit": feature in expected, "top_raising": raised, "hit_raising": raised in expected,
                          "chance": len(expected) / n_features,
                          "single_cause": not carries_taste(items.loc[row.item_id], truth["users"][row.user_id])})

    returns = []
    return_views = held_out_views(dataset, causes, ("recency",), rng, first_touch=False)
    return_views = return_views[return_views["token"].notna()]  # a return to an item, not to a shelf
    for row in return_views.head(args.pairs if "returns" in checks else 0).itertuples():
        history = explained(row.user_id, row.item_id, row.timestamp).part("history")
        items = [(value, d["item_id"]) for value, d in zip(history.values, history.details) if not d.get("shared")]
        top = max(items)[1] if items else None
        returns.append({"user_id": row.user_id, "item_id": row.item_id, "returns_to": row.token, "top": top,
                        "hit": top == row.token, "chance": 1 / max(len(items), 1)})

    def share(rows, key="hit") -> float | None:
        return float(np.mean([r[key] for r in rows])) if rows else None

    single = [r for r in behaviour if r["single_cause"]]
    by_cause = {cause: {"pairs": sum(r["cause"] == cause for r in behaviour),
                        "recovery": share([r for r in behaviour if r["cause"] == cause]),
                        "recovery_raising": share([r for r in behaviour if r["cause"] == cause], "hit_raising"),
                        "top_features": pd.Series([r["top"] for r in behaviour if r["cause"] == cause],
                                                  dtype=object).value_counts().head(3).to_dict(),
                        "single_cause_pairs": sum(r["cause"] == cause for r in single),
                        "single_cause_recovery": share([r for r in single if r["cause"] == cause])}
                for cause in CAUSE_FEATURES}
    result = {
        "benchmark": "explain_truth", "checkpoint_id": recommender.checkpoint_id, "n_steps": args.n_steps,
        "baseline": args.baseline,
        "device": str(recommender.device),
        "summary": {
            "token_held_out_pairs": len(held_tokens), "token_held_out_top3": share(held_tokens),
            "token_held_out_chance": share(held_tokens, "chance"),
            "token_top10_pairs": len(top10), "token_top10_top3": share(top10),
            "token_top10_chance": share(top10, "chance"),
            "behaviour_held_out_pairs": len(behaviour), "behaviour_top_shap_feature": share(behaviour),
            "behaviour_top_raising_feature": share(behaviour, "hit_raising"),
            "behaviour_chance": share(behaviour, "chance"),
            "behaviour_single_cause_pairs": len(single), "behaviour_single_cause_top_shap_feature": share(single),
            "behaviour_by_cause": by_cause,
            "returns_pairs": len(returns), "returns_top_past_item": share(returns),
            "returns_chance": share(returns, "chance"),
        },
        "seconds": time.perf_counter() - started,
        "rows": {"token_held_out": held_tokens, "token_top10": top10, "behaviour_held_out": behaviour,
                 "returns": returns},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
