"""Benchmark of point-in-time behaviour features: one user against a 100,000-item catalog, per query."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import FEATURE_NAMES, FeatureStore
from data.schema import EVENT_TYPES, Dataset, make_dataset

RESULTS = Path(__file__).resolve().parent / "results" / "features.json"


def synthetic_shop(n_items: int, n_users: int, n_events: int, seed: int,
                   catalog: pd.DataFrame | None = None) -> Dataset:
    """A shop with skewed item popularity, users loyal to a few categories and a year of sessions.

    Built here with numpy rather than data/synthetic.py so the benchmark measures the same shop whatever the
    demo generator becomes. `catalog` (n_items rows in the contract's item columns) replaces the random catalog;
    the users are then loyal to its categories.
    """
    rng = np.random.default_rng(seed)
    if catalog is None:
        n_categories, n_brands = 300, 5_000
        category = rng.integers(0, n_categories, n_items)
        price = np.round(rng.lognormal(3.0, 1.0, n_items), 2)
        price[rng.random(n_items) < 0.05] = np.nan  # some items have no price, as in real catalogs
        items = pd.DataFrame(
            {
                "item_id": [f"i{i:06d}" for i in range(n_items)],
                "title": [f"Item {i}" for i in range(n_items)],
                "category": [f"c{c}" for c in category],
                "brand": [f"b{b}" for b in rng.integers(0, n_brands, n_items)],
                "description": None,
                "price": price,
            }
        )
    else:
        items = catalog.reset_index(drop=True)
        category, names = pd.factorize(items["category"].fillna(""))
        n_items, n_categories = len(items), len(names)

    # Events: each user leans on 2 categories (70%) and otherwise follows shop-wide Zipf popularity.
    user = np.sort(rng.integers(0, n_users, n_events))
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popular_item = rng.choice(n_items, n_events, p=popularity / popularity.sum())
    by_category = np.argsort(category, kind="stable")
    category_start = np.searchsorted(category[by_category], np.arange(n_categories + 1))
    favourite = rng.integers(0, n_categories, (n_users, 2))[user, rng.integers(0, 2, n_events)]
    width = category_start[favourite + 1] - category_start[favourite]
    loyal_item = by_category[category_start[favourite] + (rng.random(n_events) * width).astype(np.int64)]
    item = np.where(rng.random(n_events) < 0.7, loyal_item, popular_item)

    # Time: each user starts somewhere in the year and moves on by exponential gaps (mean 6 hours).
    start = pd.Timestamp("2024-01-01", tz="UTC").value + rng.integers(0, 365 * 86_400, n_users) * 10**9
    gap = rng.exponential(6 * 3_600, n_events) * 1e9
    first_of_user = np.r_[True, user[1:] != user[:-1]]
    elapsed = np.cumsum(gap)
    elapsed -= np.maximum.accumulate(np.where(first_of_user, elapsed, 0))
    timestamp = pd.to_datetime(start[user] + elapsed.astype(np.int64), utc=True)
    kind = rng.choice(len(EVENT_TYPES), n_events, p=[0.85, 0.10, 0.05, 0.0])
    events = pd.DataFrame(
        {
            "user_id": pd.Series([f"u{u:06d}" for u in range(n_users)], dtype=object).to_numpy()[user],
            "item_id": items["item_id"].to_numpy()[item],
            "timestamp": timestamp,
            "event": pd.Categorical.from_codes(kind, categories=EVENT_TYPES),
            "value": np.nan,
        }
    )
    return make_dataset(items, events, source="generated", format="bench")


def percentiles_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p95_ms": float(np.percentile(ms, 95)), "mean_ms": float(ms.mean()), "queries": len(ms)}


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.features", description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200, help="users timed per query kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.items, args.users, args.events, args.queries) < 1:
        print("error: --items, --users, --events and --queries must be positive", file=sys.stderr)
        return 2

    started = time.perf_counter()
    dataset = synthetic_shop(args.items, args.users, args.events, args.seed)
    generate_s = time.perf_counter() - started
    started = time.perf_counter()
    store = FeatureStore(dataset)
    build_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed + 1)
    events = dataset.events
    # A moment inside a user's own history (one of their events), as training and evaluation ask for.
    query_rows = rng.choice(len(events), args.queries, replace=False)
    users = events["user_id"].to_numpy()[query_rows]
    moments = list(events["timestamp"].iloc[query_rows])
    candidates = [rng.choice(store.n_items, 100, replace=False) for _ in users]

    store.user_features(users[0])  # fills the at=None item columns once, as the app's first query does
    results = {
        "whole catalog, at=None (item columns cached)": [timed(lambda u=u: store.user_features(u)) for u in users],
        "whole catalog, point in time (nothing cached)": [
            timed(lambda u=u, t=t: store.user_features(u, at=t)) for u, t in zip(users, moments)
        ],
        "100 candidates, point in time": [
            timed(lambda u=u, t=t, c=c: store.user_features(u, at=t, item_index=c))
            for u, t, c in zip(users, moments, candidates)
        ],
    }
    # Baseline in the same run: one query per item (what a non-vectorised caller would do), extrapolated.
    probe_items = rng.choice(store.n_items, 200, replace=False)
    per_item_s = [
        timed(lambda i=i: store.user_features(users[0], at=moments[0], item_index=np.array([i])))
        for i in probe_items
    ]
    pairs = 10_000
    pair_rows = rng.choice(len(events), pairs, replace=False)
    pair_s = timed(
        lambda: store.pair_features(
            events["user_id"].to_numpy()[pair_rows],
            events["item_id"].to_numpy()[pair_rows],
            events["timestamp"].iloc[pair_rows],
        )
    )

    summary = {
        "benchmark": "features",
        "shop": {"items": store.n_items, "users": len(dataset.user_ids), "events": len(events),
                 "features": len(FEATURE_NAMES), "seed": args.seed},
        "machine": {"python": platform.python_version(), "numpy": np.__version__, "pandas": pd.__version__,
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "generate_s": generate_s,
        "store_build_s": build_s,
        "per_user": {name: percentiles_ms(seconds) for name, seconds in results.items()},
        "baseline_one_query_per_item": {
            **percentiles_ms(per_item_s),
            "whole_catalog_extrapolated_s": float(np.mean(per_item_s) * store.n_items),
        },
        "pair_features": {"pairs": pairs, "seconds": pair_s, "pairs_per_s": pairs / pair_s},
    }
    print(f"shop: {store.n_items:,} items, {len(dataset.user_ids):,} users, {len(events):,} events "
          f"(generated in {generate_s:.1f} s); FeatureStore built in {build_s:.2f} s")
    for name, stats in summary["per_user"].items():
        print(f"  {name:48s} p50 {stats['p50_ms']:7.2f} ms   p90 {stats['p90_ms']:7.2f} ms")
    baseline = summary["baseline_one_query_per_item"]
    print(f"  {'baseline: one query per item':48s} p50 {baseline['p50_ms']:7.2f} ms   "
          f"→ whole catalog ≈ {baseline['whole_catalog_extrapolated_s']:.0f} s")
    print(f"  pair_features: {pairs:,} training pairs in {pair_s:.2f} s ({pairs / pair_s:,.0f} pairs/s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
