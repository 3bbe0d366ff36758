"""Benchmark of the explanation cache: an explanation computed cold against the same one from the cache.

For N users (explain.precompute.demo_users: the users the dashboard lists first, then a seeded sample), the top
item of each, explained as the Recommend page's panel asks (50 IG steps, no drill-down):
  * cold: ExplanationCache.explain on an empty cache: the explanation computed, its key built and its entry
    written to disk (the write alone is also timed);
  * disk hit: the same call from a new ExplanationCache on the same directory (another process, or this one
    after its memory let the entry go): read, checksum and JSON load;
  * memory hit: the same call again on that cache;
  and for each hit, "click to chart": the hit plus what the panel draws from it (explain.charts' waterfall, word
  shading, history and behaviour bars, each figure serialised to JSON as st.plotly_chart does).
Both ends are measured in the same run, on the same model and threads as the dashboard (one torch thread for
serving; path runs raise it, explain.gradients). Every hit is checked to be the explanation computed cold.
Writes bench/results/realtime_cache.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.features import percentiles_ms
from bench.latency import machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "realtime_cache.json"
DEFAULT_MODEL = ROOT / "demo" / "model"
TARGET_HIT_MS = 50.0  # issue 26: an explanation from the cache, click to chart, p50
TARGET_COLD_S = 1.5  # and cold, as today


def chart_objects(explanation) -> list:
    """What views.explanation_panel.explanation_body draws from an explanation, serialised as Streamlit sends it."""
    from explain.charts import behaviour_bars, history_bars, legend_html, token_html, waterfall

    figures = [waterfall(explanation), history_bars(explanation), behaviour_bars(explanation)]
    fragments = [token_html(explanation.part("item_tokens")), token_html(explanation.part("query_tokens")),
                 legend_html()]
    return [figure.to_json() for figure in figures if figure is not None] + fragments


def run(model: Path, data: Path | None, n_users: int, steps: int, cache_dir: Path) -> dict:
    from explain import explain
    from explain.cache import ExplanationCache, entry_text, explanation_key
    from explain.precompute import demo_users
    from model.checkpoint import load

    torch.set_num_threads(int(os.environ.get("WHYREC_THREADS", "1")))  # as views.loaders serves
    clock = time.perf_counter()
    recommender = load(model, data=data)
    load_seconds = time.perf_counter() - clock
    users = demo_users(recommender, n_users)
    items = {user: recommender.recommend(user_id=user, k=1)[0].item_id for user in users}
    warm = users[0]
    explain(recommender, items[warm], user_id=warm, n_steps=2)  # the one-time costs, as the app's warm-up pays them

    cold, disk, memory, disk_chart, memory_chart, writes, sizes = [], [], [], [], [], [], []
    arguments = {"n_steps": steps, "drill_down": 0}
    cache, computed = ExplanationCache(cache_dir), {}
    for done, user in enumerate(users, start=1):
        clock = time.perf_counter()
        computed[user] = cache.explain(recommender, items[user], user_id=user, **arguments)
        cold.append(time.perf_counter() - clock)
        if computed[user].source != "computed":
            raise SystemExit(f"user {user}: expected a cold explanation, got one from {computed[user].source}")
        key = explanation_key(recommender, "explain", (items[user],), {"user_id": user, **arguments})
        clock = time.perf_counter()
        cache._write(cache.entry_path(key), key, computed[user])
        writes.append(time.perf_counter() - clock)
        sizes.append(len(entry_text(key, computed[user]).encode()))
        print(f"[{done}/{len(users)}] user {user}: cold {cold[-1]:.2f} s", file=sys.stderr)

    same = True
    for user in users:
        reader = ExplanationCache(cache_dir)  # empty memory: the first call reads the disk, the second its memory
        for hits, charted, source in ((disk, disk_chart, "disk"), (memory, memory_chart, "memory")):
            clock = time.perf_counter()
            found = reader.explain(recommender, items[user], user_id=user, **arguments)
            hits.append(time.perf_counter() - clock)
            chart_objects(found.explanation)
            charted.append(time.perf_counter() - clock)
            if found.source != source:
                raise SystemExit(f"user {user}: expected a {source} hit, got {found.source}")
            same = same and found.explanation.to_json() == computed[user].explanation.to_json()

    cold_ms, disk_chart_ms = percentiles_ms(cold), percentiles_ms(disk_chart)
    return {
        "model": str(model), "data": str(data) if data else None, "checkpoint_id": recommender.checkpoint_id,
        "users": len(users), "n_steps": steps, "load_seconds": round(load_seconds, 2),
        "cold": cold_ms, "entry_write": percentiles_ms(writes),
        "entry_kb": {"median": sorted(sizes)[len(sizes) // 2] / 1024, "max": max(sizes) / 1024},
        "disk_hit": percentiles_ms(disk), "memory_hit": percentiles_ms(memory),
        "disk_hit_click_to_chart": disk_chart_ms, "memory_hit_click_to_chart": percentiles_ms(memory_chart),
        "speed_up_p50_disk_click_to_chart": cold_ms["p50_ms"] / disk_chart_ms["p50_ms"],
        "hits_equal_cold": same,
        "targets": {"hit_click_to_chart_p50_ms": TARGET_HIT_MS, "cold_p50_s": TARGET_COLD_S,
                    "hit_met": disk_chart_ms["p50_ms"] <= TARGET_HIT_MS,
                    "cold_met": cold_ms["p50_ms"] <= TARGET_COLD_S * 1000},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime_cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="checkpoint directory (default: the demo)")
    parser.add_argument("--data", type=Path, help="the data served with it (default: the model's own)")
    parser.add_argument("--users", type=int, default=20, help="users, one top item each (default 20)")
    parser.add_argument("--steps", type=int, default=50, help="IG steps (default 50, the Recommend page's)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    started_load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="whyrec-cache-bench-") as cache_dir:
        result = run(args.model, args.data, args.users, args.steps, Path(cache_dir))
    result["machine"] = machine() | {"load_average_1m_before": started_load}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"cold p50 {result['cold']['p50_ms']:.0f} ms; from the cache, click to chart: disk p50 "
          f"{result['disk_hit_click_to_chart']['p50_ms']:.1f} ms, memory p50 "
          f"{result['memory_hit_click_to_chart']['p50_ms']:.1f} ms (hit alone: disk "
          f"{result['disk_hit']['p50_ms']:.1f} ms, memory {result['memory_hit']['p50_ms']:.2f} ms); "
          f"{result['speed_up_p50_disk_click_to_chart']:.0f}x; hits equal cold: {result['hits_equal_cold']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
