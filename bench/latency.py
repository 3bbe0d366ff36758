"""Benchmark of ranking latency: a trained checkpoint end to end, and the ranking core from 10k to 1M items."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bench.features import percentiles_ms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "latency.json"
DEFAULT_MODELS = (ROOT / "demo" / "model", ROOT / "runs" / "bench" / "demo")  # the first that exists
TARGET_MS = 50.0  # the target: p50 for one user over a 10,000-item catalog on this CPU
TARGET_ITEMS = 10_000
DIM = 128  # RecommenderConfig.dim: the width of item vectors and user states
K = 10
N_CLUSTERS = 1024  # synthetic item vectors come in clusters, as trained ones do; uniform noise would flatter nobody


def machine(device: str = "cpu") -> dict:
    try:
        import faiss
    except ImportError:  # a pinned requirement; only a bare accelerator machine may lack it
        faiss = None
    gpu = torch.cuda.get_device_name() if str(device).startswith("cuda") else None
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "faiss": faiss and faiss.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "faiss_threads": faiss and faiss.omp_get_max_threads(), "blas_threads": _blas_threads(),
            "device": str(device), "gpu": gpu, "platform": platform.platform(),
            "load_average_1m": os.getloadavg()[0]}


def limit_threads(n: int) -> None:
    """Run torch, FAISS and BLAS on n threads.

    On a small CPU shared with other work, a multi-threaded call waits for its slowest thread to be scheduled:
    with 2 threads beside a busy neighbour, a 0.1 ms product took 8-25 ms here. One thread per request is
    also how a server with several workers runs.
    """
    torch.set_num_threads(n)
    try:
        import faiss
    except ImportError:
        faiss = None
    if faiss is not None:
        faiss.omp_set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # not a pinned requirement; then BLAS keeps its own count, which machine() records
        return
    threadpool_limits(n)


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return next((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), None)


def timed(call) -> tuple[float, object]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


# ---- (a) a trained checkpoint, end to end ----------------------------------------------------------------


def checkpoint_latency(model_dir: Path, n_users: int, seed: int) -> dict:
    """Load a checkpoint, then time `recommend(user_id, k=10)` over many users, and its stages one by one."""
    from model.checkpoint import load
    from model.retrieval import top_k

    load_s, recommender = timed(lambda: load(model_dir))
    users = np.random.default_rng(seed).permutation(np.asarray(recommender.user_ids))[:n_users]
    recommender.recommend(user_id=str(users[0]), k=K)  # first call builds histories and caches
    total, stages = [], {"user state": [], "behaviour features": [], "score parts": [], "top-k": []}
    for user_id in map(str, users):
        total.append(timed(lambda u=user_id: recommender.recommend(user_id=u, k=K))[0])
        seconds, context = timed(lambda u=user_id: recommender.context(u))
        stages["user state"].append(seconds)
        seconds, features = timed(lambda c=context: recommender.behaviour_features(c))
        stages["behaviour features"].append(seconds)
        seconds, parts = timed(lambda c=context, f=features: recommender.score_parts(c, features=f))
        stages["score parts"].append(seconds)
        scores = sum(parts.values())
        stages["top-k"].append(timed(lambda s=scores, c=context: top_k(s, K, exclude=c.history.item_index))[0])
    return {"model": str(model_dir), "checkpoint_id": recommender.checkpoint_id, "items": len(recommender.item_ids),
            "load_s": load_s, "recommend": percentiles_ms(total),
            "stages": {name: percentiles_ms(seconds) for name, seconds in stages.items()}}


def shop_latency(n_items: int, n_users: int, seed: int) -> dict:
    """`recommend` on a synthetic shop of n_items with an untrained network of the real shape (MiniLM widths).

    Latency does not depend on the weights, so no training and no encoder run: item text embeddings are random
    and the encoder is a tiny random BERT that user-mode ranking never calls.
    """
    from transformers import BertConfig, BertModel

    from bench.features import synthetic_shop
    from data.features import FEATURES
    from model.encoder import TextEncoder
    from model.recommender import RecommenderConfig, RecommenderNet
    from model.serving import Recommender

    torch.manual_seed(seed)
    dataset = synthetic_shop(n_items, n_users=2_000, n_events=100_000, seed=seed)
    bert = BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=37))
    config = RecommenderConfig(n_items=n_items, n_features=len(FEATURES), text_dim=384, dim=DIM)
    net = RecommenderNet(config, TextEncoder(bert, tokenizer=None))
    embeddings = torch.nn.functional.normalize(torch.randn(n_items, 384), dim=-1)
    recommender = Recommender(net, dataset, embeddings, checkpoint_id="synthetic")
    users = np.random.default_rng(seed).permutation(np.asarray(recommender.user_ids))[:n_users]
    recommender.recommend(user_id=str(users[0]), k=K)
    seconds = [timed(lambda u=user_id: recommender.recommend(user_id=u, k=K))[0] for user_id in map(str, users)]
    return {"items": n_items, "users": len(dataset.user_ids), "events": len(dataset.events),
            "recommend": percentiles_ms(seconds)}


# ---- (b) the ranking core: exact product + top-k against FAISS ------------------------------------------------


def clustered_vectors(n: int, rng: np.random.Generator) -> np.ndarray:
    centers = rng.normal(size=(N_CLUSTERS, DIM)).astype(np.float32)
    return centers[rng.integers(0, N_CLUSTERS, n)] + 0.7 * rng.normal(size=(n, DIM)).astype(np.float32)  # (n, D)


def recall_at_k(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth)]))


def scaling(n_items: int, n_queries: int, seed: int, hnsw_max: int) -> dict:
    """Exact (numpy + top_k) vs FAISS flat (exact) and approximate (HNSW, IVF) for one catalog size."""
    import faiss

    from model.retrieval import VectorIndex, top_k

    rng = np.random.default_rng(seed)
    vectors = clustered_vectors(n_items, rng)  # (N, D)
    # A user state points where the user's items are: the mean of a few item vectors, plus noise.
    picks = rng.integers(0, n_items, (n_queries, 5))
    queries = (vectors[picks].mean(axis=1) + 0.3 * rng.normal(size=(n_queries, DIM))).astype(np.float32)  # (Q, D)

    methods: dict[str, dict] = {}

    def run(name: str, search, build_s: float | None = None) -> list[np.ndarray]:
        for query in queries[:3]:  # warm caches and thread pools
            search(query)
        seconds, found = [], []
        for query in queries:
            s, result = timed(lambda q=query: search(q))
            seconds.append(s)
            found.append(np.asarray(result))
        methods[name] = {**percentiles_ms(seconds), **({} if build_s is None else {"build_s": build_s})}
        return found

    truth = run("exact: numpy matmul + top_k", lambda q: top_k(vectors @ q, K))
    run("exact: numpy matmul only", lambda q: vectors @ q)
    build_s, flat = timed(lambda: VectorIndex(vectors, "flat"))
    found = run("faiss IndexFlatIP (exact)", lambda q: flat.search(q, K), build_s)
    methods["faiss IndexFlatIP (exact)"]["recall@10"] = recall_at_k(found, truth)

    n_lists = int(np.sqrt(n_items))  # k-means wants ~39 training points per list; sqrt(N) leaves plenty

    def build_ivf():
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(DIM), DIM, n_lists, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors[rng.choice(n_items, min(n_items, 64 * n_lists), replace=False)])
        index.add(vectors)
        return index

    build_s, ivf = timed(build_ivf)
    for n_probe in (8, 32):
        ivf.nprobe = n_probe
        name = f"faiss IVFFlat nlist={n_lists} nprobe={n_probe}"
        found = run(name, lambda q: ivf.search(q.reshape(1, -1), K)[1][0], build_s)
        methods[name]["recall@10"] = recall_at_k(found, truth)
    if n_items <= hnsw_max:
        def build_hnsw():
            index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.add(vectors)
            return index

        build_s, hnsw = timed(build_hnsw)
        for ef in (64, 256):
            hnsw.hnsw.efSearch = ef
            name = f"faiss HNSWFlat M=32 efSearch={ef}"
            found = run(name, lambda q: hnsw.search(q.reshape(1, -1), K)[1][0], build_s)
            methods[name]["recall@10"] = recall_at_k(found, truth)
    else:
        methods["faiss HNSWFlat"] = {"skipped": f"larger than --hnsw-max {hnsw_max:,}: the build takes minutes"}

    exact_p50 = methods["exact: numpy matmul + top_k"]["p50_ms"]
    for stats in methods.values():
        if "p50_ms" in stats:
            stats["p50_vs_exact"] = stats["p50_ms"] / exact_p50
    return {"items": n_items, "dim": DIM, "k": K, "queries": n_queries, "methods": methods}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint directory (default: demo/model, else runs/bench/demo, if present)")
    parser.add_argument("--users", type=int, default=200, help="users timed end to end")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                        help="catalog sizes of the scaling study")
    parser.add_argument("--queries", type=int, default=200, help="user states timed per catalog size and method")
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="largest catalog to build HNSW for (1M items takes minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=1, help="threads for torch, FAISS and BLAS (see limit_threads)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if min(args.users, args.queries, args.threads, *args.sizes) < 1 or min(args.sizes) <= K:
        print(f"error: --users, --queries and --threads must be positive and every --sizes above k={K}",
              file=sys.stderr)
        return 2
    limit_threads(args.threads)
    model_dir = args.model or next((path for path in DEFAULT_MODELS if (path / "config.json").exists()), None)
    if args.model is not None and not (args.model / "config.json").exists():
        print(f"error: {args.model}: not a checkpoint directory (no config.json)", file=sys.stderr)
        return 2

    summary: dict = {"benchmark": "latency", "machine": machine(), "target": {"p50_ms": TARGET_MS,
                                                                                "items": TARGET_ITEMS}}
    if model_dir is None:
        print("no checkpoint found (train one: make run, or python -m bench.quality --data demo); skipping (a)")
        summary["checkpoint"] = None
    else:
        result = checkpoint_latency(model_dir, args.users, args.seed)
        summary["checkpoint"] = result
        stats = result["recommend"]
        print(f"(a) {model_dir}: {result['items']:,} items, loaded in {result['load_s']:.1f} s; recommend(k={K}) "
              f"p50 {stats['p50_ms']:.1f} ms, p90 {stats['p90_ms']:.1f} ms over {stats['queries']} users")
        for name, stage in result["stages"].items():
            print(f"      {name:20s} p50 {stage['p50_ms']:7.2f} ms   p90 {stage['p90_ms']:7.2f} ms")

    shop = shop_latency(TARGET_ITEMS, args.users, args.seed)
    summary["shop_10k"] = shop
    summary["target"]["met"] = shop["recommend"]["p50_ms"] <= TARGET_MS
    print(f"(a') synthetic shop, {TARGET_ITEMS:,} items, untrained net of the real shape: recommend(k={K}) "
          f"p50 {shop['recommend']['p50_ms']:.1f} ms, p90 {shop['recommend']['p90_ms']:.1f} ms "
          f"(target p50 ≤ {TARGET_MS:.0f} ms: {'met' if summary['target']['met'] else 'NOT met'})")

    summary["scaling"] = []
    for n_items in args.sizes:
        result = scaling(n_items, args.queries, args.seed, args.hnsw_max)
        summary["scaling"].append(result)
        print(f"(b) {n_items:,} items x {DIM} dims, top-{K}, {args.queries} user states")
        for name, stats in result["methods"].items():
            if "skipped" in stats:
                print(f"      {name:44s} skipped: {stats['skipped']}")
                continue
            recall = f"   recall@10 {stats['recall@10']:.3f}" if "recall@10" in stats else ""
            build = f"   build {stats['build_s']:.1f} s" if "build_s" in stats else ""
            print(f"      {name:44s} p50 {stats['p50_ms']:8.3f} ms  ({stats['p50_vs_exact']:5.2f}x exact)"
                  f"{recall}{build}")
        print(flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
