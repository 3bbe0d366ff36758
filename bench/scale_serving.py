"""Benchmark of serving at scale: exact against two-stage ranking at 100k and 1M items (latency and recall of the
exact top 10), and the dashboard at 1M users (first Recommend page in a real browser, and the app's memory).

Item vectors. Encoding a million item texts with MiniLM takes hours on this CPU, so the large catalogs reuse a
trained model instead: every synthetic item copies a random item of a trained checkpoint (default: the Amazon
Scientific model) - its MiniLM text embedding, its ID vector and its bias - and adds Gaussian noise of
NOISE x that column's standard deviation over the catalog. The catalog therefore has the trained model's geometry
(clusters of similar products around real ones), and the user states, projections and behaviour head are that
model's own trained weights. A copied item keeps its source's category, brand and price; events come from
bench.features.synthetic_shop over that catalog (Zipf popularity, users loyal to two categories).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from bench.features import percentiles_ms, synthetic_shop
from bench.latency import limit_threads, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "scale_serving.json"
SOURCE_MODEL = Path("/work/main/runs/amazon")
NOISE = 0.5  # noise of a copied item vector, in standard deviations of each column
K = 10
TARGETS = {"two_stage_p50_ms": 50.0, "exact_p50_ms": 300.0, "recall_at_10": 0.95, "first_render_s": 5.0}


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---- a large recommender with a trained model's weights and geometry ---------------------------------------------

def scaled_recommender(source: Path, n_items: int, n_users: int, n_events: int, seed: int, retrieval=None):
    """(Recommender, dataset) over a synthetic shop of n_items, with the source checkpoint's trained weights and its
    item vectors copied with noise (see the module docstring)."""
    from safetensors.torch import load_file

    from model.checkpoint import ENCODER, ITEMS, VECTORS, WEIGHTS, read_config
    from model.encoder import TextEncoder, load_encoder
    from model.recommender import RecommenderConfig, RecommenderNet
    from model.serving import Recommender

    config = read_config(source)
    model_config = RecommenderConfig.from_dict({**config["model"], "n_items": n_items})
    transformer, tokenizer = load_encoder(source / ENCODER)
    net = RecommenderNet(model_config, TextEncoder(transformer, tokenizer))
    weights = load_file(source / WEIGHTS)
    text = load_file(source / VECTORS)["text_embeddings"]  # (n_source, text width)
    rng = np.random.default_rng(seed)
    copied = torch.as_tensor(rng.integers(0, len(text), n_items))

    def copy_rows(rows: torch.Tensor) -> torch.Tensor:  # (n_source, D) -> (n_items, D), noise per column
        noise = torch.as_tensor(rng.standard_normal((n_items, rows.shape[1]), dtype=np.float32))
        return rows[copied] + NOISE * rows.std(0, keepdim=True) * noise

    text_embeddings = copy_rows(text.float())
    for name in ("item_id.weight", "item_bias.weight"):  # row 0 is padding; catalog item i is row i + 1
        table = weights[name]
        weights[name] = torch.cat([table[:1], copy_rows(table[1:].float())])
    missing, unexpected = net.load_state_dict(weights, strict=False)
    if [k for k in missing if not k.startswith("encoder.")] or unexpected:
        raise SystemExit(f"error: {source}: weights do not fit ({missing[:3]}, {unexpected[:3]})")
    # Each item also copies its source item's category, brand and price, so that what users are loyal to (categories)
    # lines up with where the item vectors lie, as in a real catalog.
    source_items = pd.read_parquet(source / ITEMS).iloc[copied.numpy()].reset_index(drop=True)
    catalog = pd.DataFrame({"item_id": [f"i{i:07d}" for i in range(n_items)],
                            "title": source_items["title"].astype(str) + [f" #{i}" for i in range(n_items)],
                            "category": source_items["category"], "brand": source_items["brand"],
                            "description": None, "price": source_items["price"]})
    dataset = synthetic_shop(n_items, n_users=n_users, n_events=n_events, seed=seed, catalog=catalog)
    recommender = Recommender(net, dataset, text_embeddings, checkpoint_id=f"scaled-{n_items}", device="cpu",
                              retrieval=retrieval)
    return recommender, dataset


# ---- (a) exact against two-stage ----------------------------------------------------------------------------------

def ranking(source: Path, n_items: int, n_users: int, n_events: int, n_queries: int, seed: int,
            hnsw_max: int) -> dict:
    from model.retrieval import RetrievalConfig

    load_before = os.getloadavg()
    started = time.perf_counter()
    recommender, dataset = scaled_recommender(source, n_items, n_users, n_events, seed,
                                              RetrievalConfig(two_stage_from=1))
    built_s = time.perf_counter() - started
    users = [str(u) for u in np.random.default_rng(seed).permutation(np.asarray(recommender.user_ids))[:n_queries]]
    recommender.recommend(user_id=users[0], k=K, exact=True)  # the whole-catalog item stats, cached per moment

    exact_s, truth = [], {}
    for user in users:
        began = time.perf_counter()
        truth[user] = [r.item_id for r in recommender.recommend(user_id=user, k=K, exact=True)]
        exact_s.append(time.perf_counter() - began)
    result = {"items": n_items, "users": len(dataset.user_ids), "events": len(dataset.events), "k": K,
              "queries": len(users), "setup_s": built_s, "exact": percentiles_ms(exact_s), "two_stage": {}}
    print(f"  {n_items:,} items: exact p50 {result['exact']['p50_ms']:.1f} ms", flush=True)

    default = RetrievalConfig(two_stage_from=1)
    settings = [("ivf", replace(default, index="ivf", related_candidates=related))
                for related in (0, 1_000, 2_000, 10_000)]  # 0: the index's candidates alone
    settings += [("ivf", replace(default, index="ivf", ivf_probe=8))]
    if n_items <= hnsw_max:
        settings += [("hnsw", replace(default, index="hnsw", hnsw_ef_search=1_000))]
    for kind, config in settings:
        recommender.retrieval = config  # the next request builds the index for it
        recommender.refresh_item_vectors()
        began = time.perf_counter()
        recommender.candidate_index()
        index_s = time.perf_counter() - began
        recommender.recommend(user_id=users[0], k=K)
        seconds, recalls = [], []
        for user in users:
            began = time.perf_counter()
            found = [r.item_id for r in recommender.recommend(user_id=user, k=K)]
            seconds.append(time.perf_counter() - began)
            recalls.append(len(set(found) & set(truth[user])) / len(truth[user]))
        name = (f"ivf nlist={recommender.candidate_index()._index.nlist} nprobe={config.ivf_probe}" if kind == "ivf"
                else f"hnsw M={config.hnsw_neighbours} efSearch={config.hnsw_ef_search}")
        name += f" candidates={config.candidates}+{config.related_candidates} related"
        stats = {**percentiles_ms(seconds), "recall_at_10": float(np.mean(recalls)),
                 "users_with_full_recall": float(np.mean(np.asarray(recalls) == 1.0)), "index_build_s": index_s,
                 "config": config.to_dict()}
        stats["p50_vs_exact"] = stats["p50_ms"] / result["exact"]["p50_ms"]
        result["two_stage"][name] = stats
        print(f"  {name}: p50 {stats['p50_ms']:.1f} ms, p95 {stats['p95_ms']:.1f} ms, "
              f"recall@10 {stats['recall_at_10']:.3f}, "
              f"index {index_s:.1f} s", flush=True)
    if n_items > hnsw_max:
        result["two_stage"]["hnsw"] = {"skipped": f"larger than --hnsw-max {hnsw_max:,}"}
    result["rss_mb"] = rss_mb()
    result["load_average"] = {"before": list(load_before), "after": list(os.getloadavg())}  # 1, 5, 15 minutes
    return result


# ---- (b) the dashboard at many users ------------------------------------------------------------------------------

def build_app_checkpoint(source: Path, out: Path, n_users: int, seed: int) -> dict:
    """A checkpoint for a shop of n_users (items 10% of users, 20 events per user) with the scaled model; a few of
    its users (with events) are written beside it for the page timings."""
    from model.checkpoint import save

    started = time.perf_counter()
    n_items = max(n_users // 10, 100)
    recommender, dataset = scaled_recommender(source, n_items, n_users, 20 * n_users, seed)
    shop_s = time.perf_counter() - started
    save(out, recommender.net, dataset, recommender.text_embeddings, base_encoder=str(source / "encoder"))
    users = [str(u) for u in np.random.default_rng(seed).choice(np.asarray(dataset.user_ids), 4, replace=False)]
    out.with_suffix(".users.json").write_text(json.dumps(users))
    return {"users": n_users, "items": n_items, "events": len(dataset.events), "shop_s": shop_s,
            "save_s": time.perf_counter() - started - shop_s}


def page_timings(model: Path, users: list[str], timeout: float = 1_800) -> dict:
    """Start the dashboard on `model` (streamlit run, one thread per request) and time, with Playwright and the
    system Chromium, the first ranked list: once while the model loads, then for new visitors opening a link to
    a user nobody has opened (their ranking, profile and explanation are not cached; the model is)."""
    import shutil

    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    from bench.first_run import RANKED_LIST, free_port, stop

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("system Chromium is not installed (apt-get install chromium)")
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"), "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "WHYREC_MODEL": str(model), "WHYREC_DATA": str(model), "WHYREC_THREADS": "1"}
    url = f"http://127.0.0.1:{port}/"
    log = model.with_suffix(".streamlit.log")
    with sync_playwright() as playwright, open(log, "w") as output:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--no-first-run"])
        started = time.monotonic()
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=subprocess.STDOUT,
                                  start_new_session=True)
        try:
            page = browser.new_page(viewport={"width": 1440, "height": 1600})
            while True:
                if time.monotonic() - started > timeout or server.poll() is not None:
                    raise SystemExit(f"no ranked list within {timeout:.0f} s (server exit {server.poll()}); see {log}")
                try:
                    page.goto(url, timeout=5_000)
                    page.wait_for_selector(RANKED_LIST, state="visible", timeout=timeout * 1_000)
                    break
                except PlaywrightError:
                    time.sleep(0.5)
            cold_s = time.monotonic() - started
            page.close()
            renders = []
            for user in users:
                visitor = browser.new_page(viewport={"width": 1440, "height": 1600})
                began = time.monotonic()
                visitor.goto(f"{url}?user={user}", timeout=60_000)
                visitor.wait_for_selector(RANKED_LIST, state="visible", timeout=120_000)
                renders.append(time.monotonic() - began)
                visitor.close()
            memory = _process_memory_mb(server.pid)
        finally:
            stop(server)
            browser.close()
    return {"server_start_to_first_ranked_list_s": cold_s, "new_visitor_first_ranked_list_s": renders,
            "new_visitor_first_ranked_list_median_s": float(np.median(renders)), "users_opened": users,
            **memory}


def _process_memory_mb(pid: int) -> dict:
    """The server's resident memory now and at its peak (VmRSS, VmHWM), MB."""
    values = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "VmHWM"):
                values[key] = int(line.split()[1]) / 1024
    return {"app_rss_mb": values.get("VmRSS"), "app_peak_rss_mb": values.get("VmHWM")}


def app_at_scale(source: Path, n_users: int, workdir: Path, seed: int) -> dict:
    model = workdir / f"app-{n_users}"
    built = None
    if not (model / "config.json").exists():
        print(f"  building a {n_users:,}-user checkpoint in {model}", flush=True)
        built = build_app_checkpoint(source, model, n_users, seed)
    users = json.loads(model.with_suffix(".users.json").read_text())
    return {"users": n_users, "checkpoint": str(model), "built": built, **page_timings(model, users[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale_serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=SOURCE_MODEL, help="trained checkpoint to scale up")
    parser.add_argument("--items", type=int, nargs="*", default=[100_000, 1_000_000], help="catalog sizes for (a)")
    parser.add_argument("--users", type=int, default=20_000, help="users of the shop behind (a)")
    parser.add_argument("--events", type=int, default=400_000, help="events of the shop behind (a)")
    parser.add_argument("--queries", type=int, default=100, help="users timed per catalog size and setting")
    parser.add_argument("--hnsw-max", type=int, default=100_000, help="largest catalog to build HNSW for")
    parser.add_argument("--app-users", type=int, nargs="*", default=[1_000_000], help="shops for (b); none skips")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/whyrec-scale-serving"),
                        help="where (b)'s large checkpoints are written (reused when present)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if not (args.source / "config.json").exists():
        print(f"error: {args.source}: not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2
    limit_threads(1)  # as the dashboard serves: one thread per request (views.loaders)
    summary: dict = {"benchmark": "scale_serving", "machine": machine(), "targets": TARGETS,
                     "item_vectors": f"copies of {args.source}'s items with noise {NOISE} std per column",
                     "ranking": [], "app": []}
    for n_items in args.items:
        print(f"(a) ranking, {n_items:,} items", flush=True)
        summary["ranking"].append(ranking(args.source, n_items, args.users, args.events, args.queries, args.seed,
                                          args.hnsw_max))
    for n_users in args.app_users:
        print(f"(b) the dashboard at {n_users:,} users", flush=True)
        result = app_at_scale(args.source, n_users, args.workdir, args.seed)
        summary["app"].append(result)
        print(json.dumps(result, indent=1), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
