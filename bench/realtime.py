"""Benchmark of int8 encoding against float32 on this CPU, in one run: speed, agreement, ranking quality.

Three encoders of the same checkpoint: the float32 one (torch, what the checkpoint holds), int8 by torch dynamic
quantisation (torch.ao.quantization.quantize_dynamic on every Linear, weights per channel) and int8 by ONNX
Runtime dynamic quantisation (model.quantize, weights per channel: what the product serves with). For each:

  * query encoding: tokenizer + encoder for one query at a time (batch 1), over --queries typical queries (the
    shop's pseudo-queries: a few title words and the category), rounds interleaved across the encoders;
  * catalog encoding: the whole catalog's item texts, batches of 64 sorted by length (TextEncoder.embed);
  * agreement with float32: cosine of the item and query embeddings; query-mode top-10 overlap and top-1 match;
  * test NDCG@10 by model.evaluate.evaluate_model (the same leave-last-out split), the catalog re-encoded by the
    int8 encoders (Recommender.reencoded) against the checkpoint's float32 embeddings: relative change;
  * word-deletion batches (explain.faithfulness, the demo model, --users users' top-1 items): the top-3 word
    deletion drop and the top-3 token drop with each encoder, and the seconds of the removal batch.

Both models are served on one torch thread (as the dashboard serves a request); ONNX Runtime gets as many.
Writes bench/results/realtime.json (or --out).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from bench.latency import limit_threads, machine

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "realtime.json"
DEMO_MODEL = ROOT / "demo" / "model"
AMAZON_MODEL = ROOT / "runs" / "amazon"
FLOAT, TORCH_INT8, ORT_INT8 = "float32 (torch)", "int8 (torch dynamic)", "int8 (onnxruntime)"
K = 10
MAX_RELATIVE_NDCG_CHANGE = 0.01  # the bar: int8 may move test NDCG@10 by at most 1%


def torch_int8(encoder):
    """The encoder with every Linear dynamically quantised by torch (int8 weights per output channel)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from model.encoder import TextEncoder

    with warnings.catch_warnings():  # torch's notice that eager-mode quantisation moves to torchao
        warnings.simplefilter("ignore")
        transformer = quantize_dynamic(copy.deepcopy(encoder.transformer),
                                       {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    return TextEncoder(transformer, encoder.tokenizer)


def encoders(recommender, cache: Path) -> tuple[dict, dict]:
    """The three encoders of this checkpoint, and the seconds each took to derive (ONNX: cold, then cached)."""
    from model.quantize import int8_encoder

    started = time.perf_counter()
    quantised_torch = torch_int8(recommender.net.encoder)
    torch_s = time.perf_counter() - started
    started = time.perf_counter()
    quantised_ort = int8_encoder(recommender.net.encoder, cache)
    cold_s = time.perf_counter() - started
    started = time.perf_counter()
    int8_encoder(recommender.net.encoder, cache)
    warm_s = time.perf_counter() - started
    return ({FLOAT: recommender.net.encoder, TORCH_INT8: quantised_torch, ORT_INT8: quantised_ort},
            {TORCH_INT8: {"derive_s": torch_s}, ORT_INT8: {"derive_cold_s": cold_s, "derive_cached_s": warm_s}})


def served_by(recommender, encoder):
    """The same checkpoint serving queries and the removal batches with `encoder` (explanations' gradients
    aside): a net whose encoder is `encoder`, every other weight the checkpoint's."""
    from model.recommender import RecommenderNet
    from model.serving import Recommender

    net = RecommenderNet(recommender.config, recommender.net.encoder)
    net.load_state_dict(recommender.net.state_dict())
    net.encoder = encoder  # this net's own encoder slot: the checkpoint's net keeps its float one
    return Recommender(net, recommender.dataset, recommender.text_embeddings, checkpoint_id=recommender.checkpoint_id,
                       metadata=recommender.metadata, device="cpu", text_encoder=encoder)


def query_speed(variants: dict, queries: list[str], max_tokens: int, rounds: int) -> dict:
    """p50 ms per query (tokenizer + encoder, batch 1) for each encoder, rounds interleaved."""
    seconds = {name: [] for name in variants}
    for encoder in variants.values():  # warm-up
        _encode_one(encoder, queries[0], max_tokens)
    for _ in range(rounds):
        for name, encoder in variants.items():
            for query in queries:
                started = time.perf_counter()
                _encode_one(encoder, query, max_tokens)
                seconds[name].append(time.perf_counter() - started)
    out = {name: {"p50_ms": 1e3 * float(np.median(s)), "mean_ms": 1e3 * float(np.mean(s)), "calls": len(s)}
           for name, s in seconds.items()}
    for name in variants:
        out[name]["speedup_vs_float32"] = out[FLOAT]["p50_ms"] / out[name]["p50_ms"]
    return out


def _encode_one(encoder, query: str, max_tokens: int) -> torch.Tensor:
    batch = encoder.tokenize([query], max_tokens)
    with torch.no_grad():
        return encoder(batch["input_ids"], batch["attention_mask"])


def cosine_summary(exact: torch.Tensor, other: torch.Tensor) -> dict:
    cosines = torch.nn.functional.cosine_similarity(exact, other).numpy()
    return {"min": float(cosines.min()), "p01": float(np.percentile(cosines, 1)), "mean": float(cosines.mean())}


def catalog_and_agreement(recommender, variants: dict, queries: list[str]) -> tuple[dict, dict]:
    """Catalog encoding seconds and embeddings per encoder; their agreement with float32 (items and queries)."""
    from data.schema import item_texts

    texts, config = item_texts(recommender.dataset), recommender.config
    width = config.text_dim  # the encoder's half; the lexical half is word embeddings, never quantised
    catalog, speed = {}, {}
    for name, encoder in variants.items():
        started = time.perf_counter()
        catalog[name] = encoder.embed(texts, config.max_item_tokens, lexical=config.lexical_text)
        speed[name] = {"seconds": time.perf_counter() - started, "items": len(texts)}
    for name in variants:
        speed[name]["speedup_vs_float32"] = speed[FLOAT]["seconds"] / speed[name]["seconds"]
    stored = recommender.text_embeddings
    agreement = {"float32 re-encoded vs the checkpoint's embeddings": cosine_summary(stored, catalog[FLOAT])}
    query_embeddings = {name: encoder.embed(queries, config.max_query_tokens) for name, encoder in variants.items()}
    for name in (TORCH_INT8, ORT_INT8):
        agreement[name] = {
            "item_embeddings_cosine": cosine_summary(catalog[FLOAT][:, :width], catalog[name][:, :width]),
            "lexical_half_max_abs_diff": (float((catalog[FLOAT][:, width:] - catalog[name][:, width:]).abs().max())
                                          if config.lexical_text else None),
            "query_embeddings_cosine": cosine_summary(query_embeddings[FLOAT], query_embeddings[name]),
        }
    return {"speed": speed, "agreement": agreement}, catalog


def query_rankings(recommender, variants: dict, queries: list[str]) -> dict:
    """Query-mode top-10 with each encoder against float32's: overlap, top-1 match, largest score change."""
    servers = {name: served_by(recommender, encoder) for name, encoder in variants.items()}
    exact = {q: servers[FLOAT].recommend(query=q, k=K) for q in queries}
    out = {}
    for name in (TORCH_INT8, ORT_INT8):
        overlaps, top1, score_change = [], [], []
        for query in queries:
            ranked = servers[name].recommend(query=query, k=K)
            overlaps.append(len({r.item_id for r in ranked} & {r.item_id for r in exact[query]}) / K)
            top1.append(ranked[0].item_id == exact[query][0].item_id)
            float_scores = servers[FLOAT].score(query=query, item_ids=[r.item_id for r in ranked])
            score_change.append(float(np.max(np.abs(np.array([r.score for r in ranked]) - float_scores))))
        out[name] = {"top10_overlap_mean": float(np.mean(overlaps)), "top10_overlap_min": float(np.min(overlaps)),
                     "top1_match": float(np.mean(top1)), "score_change_max": float(np.max(score_change)),
                     "score_change_p50": float(np.median(score_change)), "queries": len(queries)}
    return out


def ndcg(recommender, catalog: dict, max_users: int | None) -> dict:
    """Test NDCG@10 / HR@10 with the checkpoint's float32 embeddings and with the catalog each int8 encoder gives."""
    from model.evaluate import evaluate_model
    from model.serving import Recommender

    def evaluate(embeddings) -> dict:
        served = Recommender(recommender.net, recommender.dataset, embeddings, checkpoint_id=recommender.checkpoint_id,
                             metadata=recommender.metadata, device="cpu")
        report = evaluate_model(served, stage="test", max_users=max_users)
        model = report["models"]["model"]
        return {"NDCG@10": model["NDCG@10"], "HR@10": model["HR@10"], "users": report["users"]}

    out = {FLOAT: evaluate(recommender.text_embeddings)}
    for name in (TORCH_INT8, ORT_INT8):
        out[name] = evaluate(catalog[name])
        change = (out[name]["NDCG@10"] - out[FLOAT]["NDCG@10"]) / out[FLOAT]["NDCG@10"]
        out[name]["NDCG@10_relative_change"] = change
        out[name]["within_1_percent"] = abs(change) <= MAX_RELATIVE_NDCG_CHANGE
    return out


def deletion(recommender, variants: dict, n_users: int, seed: int) -> dict:
    """The word-deletion test of explain.faithfulness on each user's top-1 item, its removal batch run through
    each encoder; the explanation itself (IG) is the float one for all."""
    from explain import explain
    from explain.faithfulness import _view, removal_curves

    servers = {name: served_by(recommender, encoder) for name, encoder in variants.items()}
    rng = np.random.default_rng(seed)
    users = [u for u in rng.permutation(np.asarray(recommender.user_ids)) if len(recommender.histories[u]) >= 3]
    rows = []
    for user in map(str, users[:n_users]):
        item = recommender.recommend(user_id=user, k=1)[0].item_id
        explanation = explain(recommender, item, user_id=user, drill_down=0)
        part = explanation.part("item_tokens")
        row = {"user_id": user, "item_id": item}
        for name, served in servers.items():
            view = _view(served, explanation, None)
            started = time.perf_counter()
            curves = removal_curves(served, view, part, explanation.score)
            row[name] = {"seconds": time.perf_counter() - started,
                         **{key: curves[key] for key in ("deletion_top3_words_drop", "deletion_top3_drop",
                                                         "deletion_random3_words_drop", "aopc_comprehensiveness")}}
        rows.append(row)
    summary = {}
    for name in variants:
        summary[name] = {key: float(np.median([row[name][key] for row in rows]))
                         for key in ("deletion_top3_words_drop", "deletion_top3_drop", "deletion_random3_words_drop",
                                     "aopc_comprehensiveness", "seconds")}
        summary[name]["speedup_vs_float32"] = summary[FLOAT]["seconds"] / summary[name]["seconds"]
        if name != FLOAT:
            gaps = [abs(row[name]["deletion_top3_words_drop"] - row[FLOAT]["deletion_top3_words_drop"])
                    / max(abs(row[FLOAT]["deletion_top3_words_drop"]), 1e-9) for row in rows]
            summary[name]["top3_words_drop_relative_change_median"] = float(np.median(gaps))
            summary[name]["top3_words_drop_relative_change_max"] = float(np.max(gaps))
    return {"users": len(rows), "median": summary, "rows": rows}


def bench_model(model_dir: Path, args, with_deletion: bool) -> dict:
    from model.checkpoint import load
    from model.train import pseudo_queries

    recommender = load(model_dir)
    queries = list(dict.fromkeys(pseudo_queries(recommender.dataset, args.seed)))
    queries = [queries[i] for i in np.random.default_rng(args.seed).permutation(len(queries))[: args.queries]]
    with tempfile.TemporaryDirectory(prefix="whyrec-int8-") as cache:
        variants, derive = encoders(recommender, Path(cache))
        out = {"model": str(model_dir), "checkpoint_id": recommender.checkpoint_id,
               "items": len(recommender.item_ids), "lexical_text": recommender.config.lexical_text,
               "use_id_embedding": recommender.config.use_id_embedding, "derive": derive,
               "query_encoding": query_speed(variants, queries, recommender.config.max_query_tokens, args.rounds)}
        print(f"{model_dir}: query encoding {json.dumps(out['query_encoding'])}", file=sys.stderr)
        out["catalog_encoding"], catalog = catalog_and_agreement(recommender, variants, queries)
        print(f"{model_dir}: catalog {json.dumps(out['catalog_encoding'])}", file=sys.stderr)
        out["query_rankings"] = query_rankings(recommender, variants, queries)
        out["test_ndcg"] = ndcg(recommender, catalog, args.max_users)
        print(f"{model_dir}: NDCG {json.dumps(out['test_ndcg'])}", file=sys.stderr)
        if with_deletion:
            out["word_deletion"] = deletion(recommender, variants, args.users, args.seed)
            print(f"{model_dir}: deletion {json.dumps(out['word_deletion']['median'])}", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.realtime", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-model", type=Path, default=DEMO_MODEL)
    parser.add_argument("--amazon-model", type=Path, default=AMAZON_MODEL, help="skipped when absent")
    parser.add_argument("--queries", type=int, default=200, help="typical queries timed and ranked")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds over the queries, interleaved")
    parser.add_argument("--users", type=int, default=20, help="explanations in the word-deletion comparison")
    parser.add_argument("--max-users", type=int, default=None, help="evaluated users (default: every test user)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    limit_threads(args.threads)
    started = time.perf_counter()
    result = {"machine": machine(), "threads": args.threads, "settings": vars(args) | {"out": str(args.out)},
              "models": {}}
    result["models"]["demo"] = bench_model(args.demo_model, args, with_deletion=True)
    if (args.amazon_model / "config.json").exists():
        result["models"]["amazon_scientific"] = bench_model(args.amazon_model, args, with_deletion=False)
    result["seconds"] = time.perf_counter() - started
    result["load_average_1m_end"] = machine()["load_average_1m"]
    result["verdict"] = verdict(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(result["verdict"], indent=2))
    return 0


def verdict(result: dict) -> dict:
    """Which int8 encoder measures better here, and whether it keeps every model within the 1% NDCG bar."""
    models = result["models"].values()
    out = {}
    for name in (TORCH_INT8, ORT_INT8):
        out[name] = {
            "query_speedup_p50": statistics.median(m["query_encoding"][name]["speedup_vs_float32"] for m in models),
            "catalog_speedup": statistics.median(m["catalog_encoding"]["speed"][name]["speedup_vs_float32"]
                                                 for m in models),
            "item_cosine_min": min(m["catalog_encoding"]["agreement"][name]["item_embeddings_cosine"]["min"]
                                   for m in models),
            "max_abs_ndcg_relative_change": max(abs(m["test_ndcg"][name]["NDCG@10_relative_change"]) for m in models),
        }
        out[name]["within_1_percent_everywhere"] = out[name]["max_abs_ndcg_relative_change"] <= MAX_RELATIVE_NDCG_CHANGE
    return out


if __name__ == "__main__":
    sys.exit(main())
