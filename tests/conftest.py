"""Shared fixtures: a tiny random BERT encoder directory and a tiny synthetic shop, built once per run."""

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Tiny models: a path run is a few microseconds of work per op, where a second thread only waits.
os.environ.setdefault("WHYREC_PATH_THREADS", "1")
# No test reads another's explanations from disk: the explanation cache is in memory unless a test gives a directory.
os.environ.setdefault("WHYREC_CACHE", "off")
# The int8 encoders the tests derive (model.quantize) go to a directory of this run, not the user's cache.
os.environ.setdefault("WHYREC_ENCODER_CACHE", tempfile.mkdtemp(prefix="whyrec-test-encoders-"))

WORDS = ["the", "a", "and", "of", "for", "with", "to", "in", "on", "is", "are", "red", "blue", "green", "black", "white", "steel", "wool", "cotton", "linen", "leather", "mug", "pan", "pot", "cup", "sock", "shoe", "shirt", "hat", "lamp", "desk", "chair", "bag", "pen", "book", "toy", "game", "phone", "case", "cable", "waterproof", "wireless", "organic", "vintage", "compact", "portable", "classic", "premium", "budget", "soft", "warm", "light", "kitchen", "home", "garden", "sports", "outdoor", "office", "toys", "audio", "running", "bedding", "brand", "category", "item", "shop"]


def build_tiny_encoder(directory: Path) -> Path:
    """A Hugging Face encoder directory with a random 1-layer BERT (hidden 32) and a WordPiece vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    directory.mkdir(parents=True, exist_ok=True)
    pieces = "abcdefghijklmnopqrstuvwxyz0123456789"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *[f"##{c}" for c in pieces], *pieces, *".,:-'"]
    vocab = {word: i for i, word in enumerate(dict.fromkeys(words))}
    tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=True)
    tokenizer.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=37, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-encoder"))


@pytest.fixture(scope="session")
def tiny_shop():
    from data.synthetic import generate

    return generate(n_users=60, n_items=80, seed=3, target_events=2400)


@pytest.fixture(scope="session")
def shop_data(tiny_shop, tmp_path_factory) -> Path:
    """The tiny shop written as files, for the dashboard's data directory."""
    from data.io import write_tables

    data = tmp_path_factory.mktemp("shop-data")
    write_tables(tiny_shop, data)
    return data


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tiny_encoder, tiny_shop) -> Path:
    """A checkpoint trained for two epochs on the tiny shop with the tiny encoder."""
    from model.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-model") / "model"
    train(tiny_shop, out, model_overrides={"dim": 16, "max_item_tokens": 24, "max_query_tokens": 16},
          train_config=TrainConfig(epochs=2, batch_size=16, behaviour_epochs=2), base_model=str(tiny_encoder),
          progress=False, log=lambda *_: None)
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Hundreds of tiny forward passes: on a small shared CPU, waking a second thread costs more than the work."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def recommender(tiny_model):
    """The tiny model served (a module's own `recommender` fixture overrides this one)."""
    from model.checkpoint import load

    return load(tiny_model)


@pytest.fixture(scope="module")
def user(recommender) -> str:
    """The first user with at least three history items."""
    return next(u for u in recommender.user_ids if len(recommender.histories[u]) >= 3)
