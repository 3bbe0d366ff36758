"""The int8 encoder (model.quantize): it agrees with the float one, serves queries and the catalog, leaves the
checkpoint and the explanations by gradient as they were, and refuses what it cannot do."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from explain import explain
from model.checkpoint import load
from model.encoder import TextEncoder, load_encoder
from model.errors import ModelError
from model.quantize import Int8Transformer, int8_encoder, resolve_quantize

TEXTS = ["red wool sock", "steel kitchen pan with lid", "wireless audio cable", "organic cotton shirt for the office",
         "vintage leather bag", "portable lamp", "budget running shoe", "classic desk chair", "green garden hat",
         "soft warm bedding for the home"]
QUERIES = ["wool sock", "kitchen pan", "leather bag", "running shoe", "desk lamp", "cotton shirt"]


@pytest.fixture(scope="module")
def encoders(tiny_encoder, tmp_path_factory):
    transformer, tokenizer = load_encoder(tiny_encoder)
    float_encoder = TextEncoder(transformer, tokenizer)
    return float_encoder, int8_encoder(float_encoder, tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="module")
def served(tiny_model):
    return load(tiny_model, quantize="none"), load(tiny_model, quantize="int8")


def cosines(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.cosine_similarity(a, b).numpy()


def test_int8_embeddings_agree_with_float_and_the_lexical_half_is_exact(encoders):
    float_encoder, int8 = encoders
    assert isinstance(int8.transformer, Int8Transformer) and not isinstance(float_encoder.transformer, Int8Transformer)
    exact, quantised = float_encoder.embed(TEXTS, 24, lexical=True), int8.embed(TEXTS, 24, lexical=True)
    width = float_encoder.hidden_size
    assert quantised.shape == exact.shape == (len(TEXTS), 2 * width)
    close = cosines(exact[:, :width], quantised[:, :width])
    assert close.min() > 0.99, close
    assert not torch.equal(exact[:, :width], quantised[:, :width])  # it is another computation, not the same one
    torch.testing.assert_close(quantised[:, width:], exact[:, width:])  # word embeddings are not quantised
    # Nearest neighbours among the texts are the same ones.
    for embeddings in (exact, quantised):
        embeddings /= embeddings.norm(dim=-1, keepdim=True)
    assert torch.equal((exact @ exact.T).argsort(1, descending=True)[:, :3],
                       (quantised @ quantised.T).argsort(1, descending=True)[:, :3])


def test_int8_encoder_refuses_gradients(encoders):
    float_encoder, int8 = encoders
    batch = float_encoder.tokenize(["red wool sock"], 24)
    embeds = float_encoder.word_embeddings(batch["input_ids"]).detach().requires_grad_(True)
    with pytest.raises(ModelError, match="no gradients"):
        int8(attention_mask=batch["attention_mask"], inputs_embeds=embeds)
    with torch.no_grad():  # the same inputs without gradients: the removal batches' case
        assert int8(attention_mask=batch["attention_mask"], inputs_embeds=embeds).shape == (1, float_encoder.hidden_size)


def test_the_cached_graph_is_reused_and_a_corrupted_one_derived_again(tiny_encoder, tmp_path):
    transformer, tokenizer = load_encoder(tiny_encoder)
    float_encoder = TextEncoder(transformer, tokenizer)
    first = int8_encoder(float_encoder, tmp_path)
    graph = first.transformer.graph
    meta = json.loads(graph.with_name(graph.name.replace(".int8.onnx", ".json")).read_text())
    assert meta["sha256"] == hashlib.sha256(graph.read_bytes()).hexdigest() == first.transformer.checksum
    stamp = graph.stat().st_mtime_ns
    assert int8_encoder(float_encoder, tmp_path).transformer.graph.stat().st_mtime_ns == stamp  # reused
    graph.write_bytes(graph.read_bytes()[:1000])  # truncated
    again = int8_encoder(float_encoder, tmp_path)
    assert hashlib.sha256(graph.read_bytes()).hexdigest() == meta["sha256"]
    torch.testing.assert_close(again.embed(TEXTS, 24), first.embed(TEXTS, 24))
    # Other weights give another graph: a tuned encoder never reads the base's.
    with torch.no_grad():
        transformer.encoder.layer[0].output.dense.weight.mul_(1.5)
    assert int8_encoder(float_encoder, tmp_path).transformer.graph != graph
    assert len(list(tmp_path.glob("*.int8.onnx"))) == 2


def test_quantize_setting_by_device():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_quantize("auto", cpu) == "int8" and resolve_quantize("none", cpu) == "none"
    assert resolve_quantize("auto", cuda) == "none" and resolve_quantize("none", cuda) == "none"
    with pytest.raises(ModelError, match="CPU path"):
        resolve_quantize("int8", cuda)  # never silently: asked for on CUDA, it is refused
    with pytest.raises(ModelError, match="not one of"):
        resolve_quantize("int4", cpu)


def test_query_rankings_agree_and_user_rankings_are_untouched(served, user):
    exact, quantised = served
    assert exact.quantization == "none" and quantised.quantization == "int8"
    overlaps = []
    for query in QUERIES:
        a, b = exact.recommend(query=query, k=10), quantised.recommend(query=query, k=10)
        overlaps.append(len({r.item_id for r in a} & {r.item_id for r in b}) / 10)
        assert a[0].item_id == b[0].item_id, query
        np.testing.assert_allclose([r.score for r in b], exact.score(query=query, item_ids=[r.item_id for r in b]),
                                   atol=0.05 / exact.config.temperature)
    assert np.mean(overlaps) >= 0.9, overlaps
    # Without a query nothing is encoded at serving time: the cached item vectors are the checkpoint's.
    a, b = exact.recommend(user_id=user, k=10), quantised.recommend(user_id=user, k=10)
    assert [r.item_id for r in a] == [r.item_id for r in b]
    assert [r.score for r in a] == [r.score for r in b]


def test_catalog_reencoding(served, tiny_model):
    exact, quantised = served
    # The float path gives the checkpoint's cached embeddings back (what the int8 one is compared with).
    torch.testing.assert_close(exact.encode_catalog(), exact.text_embeddings, atol=1e-5, rtol=1e-4)
    catalog = quantised.encode_catalog()
    assert catalog.shape == exact.text_embeddings.shape
    width = exact.config.text_dim
    assert cosines(catalog[:, :width], exact.text_embeddings[:, :width]).min() > 0.99
    reencoded = quantised.reencoded()
    assert reencoded.quantization == "int8" and torch.equal(reencoded.text_embeddings, catalog)
    user = next(u for u in exact.user_ids if len(exact.histories[u]) >= 3)
    a, b = exact.recommend(user_id=user, k=10), reencoded.recommend(user_id=user, k=10)
    assert len({r.item_id for r in a} & {r.item_id for r in b}) >= 8


def test_explanations_keep_the_float_encoder(served, user):
    exact, quantised = served
    query = "wool sock"
    item = exact.recommend(user_id=user, query=query, k=1)[0].item_id
    a = explain(exact, item, user_id=user, query=query, n_steps=8, drill_down=0)
    b = explain(quantised, item, user_id=user, query=query, n_steps=8, drill_down=0)
    assert b.score == a.score  # the float score, whatever encoder serves the list
    for kind in ("item_tokens", "query_tokens"):
        assert b.part(kind).values == a.part(kind).values, kind
    # The int8 list's score of the item differs from the float one by a little only.
    listed = quantised.score(user_id=user, query=query, item_ids=[item])[0]
    assert listed != a.score and abs(listed - a.score) < 0.05 / exact.config.temperature


def test_the_checkpoint_on_disk_is_unchanged(tiny_model):
    def snapshot(directory: Path) -> dict:
        return {p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(directory.rglob("*")) if p.is_file()}

    before = snapshot(tiny_model)
    recommender = load(tiny_model, quantize="int8")
    recommender.recommend(query="wool sock", k=3)
    assert snapshot(tiny_model) == before
    assert not str(recommender.text_encoder.transformer.graph).startswith(str(tiny_model))


@pytest.mark.slow
def test_real_encoder_int8_agrees_with_float(tmp_path):
    """all-MiniLM-L6-v2 itself (the installed package): embeddings and the neighbours they give agree."""
    transformer, tokenizer = load_encoder()
    float_encoder = TextEncoder(transformer, tokenizer)
    int8 = int8_encoder(float_encoder, tmp_path)
    texts = [*TEXTS, "stainless steel frying pan, non-stick", "bluetooth over-ear headphones with noise cancelling",
             "merino hiking socks, pack of three", "usb-c charging cable 2 m", "ceramic coffee mug 350 ml"]
    exact, quantised = float_encoder.embed(texts, 64), int8.embed(texts, 64)
    close = cosines(exact, quantised)
    assert close.mean() > 0.99 and close.min() > 0.98, close
    queries = float_encoder.embed(QUERIES, 64), int8.embed(QUERIES, 64)
    assert cosines(*queries).min() > 0.98
    top = [(q @ c.T).topk(3, dim=1).indices for q, c in ((queries[0], exact), (queries[1], quantised))]
    assert (top[0][:, 0] == top[1][:, 0]).all()


def test_command_line_derives_and_serves_int8(tiny_model, capsys):
    from model.__main__ import main

    assert main(["quantize", "--model", str(tiny_model)]) == 0
    assert "int8 encoder of" in capsys.readouterr().out
    assert main(["recommend", "--model", str(tiny_model), "--query", "wool sock", "--k", "3",
                 "--quantize", "int8"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3
    with pytest.raises(SystemExit) as refused:
        main(["recommend", "--model", str(tiny_model), "--query", "wool sock", "--quantize", "int4"])
    assert refused.value.code == 2
