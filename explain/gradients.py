"""Captum Integrated Gradients over a score view's inputs: the settings, the baselines, one run, token bookkeeping.

IG attributes f(x) - f(x') to the inputs by integrating the gradient along the straight path from the
baseline x' to the input x: attribution_i = (x_i - x'_i) * mean over the path of df/dx_i. By completeness
the attributions sum to f(x) - f(x'); Captum reports the numerical shortfall as the convergence delta
(sum of attributions - (f(x) - f(x'))), which we keep as `completeness_gap`. A token's value is the sum of
its embedding dimensions' attributions. Only `ScoreView.forward` is called: no hooks on the shared model,
so sessions explaining at the same time cannot disturb each other.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from explain.errors import ExplanationError

N_STEPS_RANGE = (1, 1000)  # beyond 1000 steps the delta no longer shrinks in float32; it only costs time
# Captum's quadrature rules, less "riemann_trapezoid": its step sizes sum to (n - 1) / n, not 1 (captum 0.9), so
# its attributions fall short of completeness by 1/n of f(x) - f(baseline) however fine the path.
METHODS = ("gausslegendre", "riemann_middle", "riemann_left", "riemann_right")
BASELINES = {
    "pad": "[PAD] embeddings, [CLS]/[SEP] kept: text that says nothing, at full length",
    "zero": "zero vectors, [CLS]/[SEP] kept: the origin of the embedding space",
    "mask": "[MASK] embeddings, [CLS]/[SEP] kept: every word hidden (tokenizers with a mask token)",
    "template": "[PAD] embeddings, [CLS]/[SEP] and the item text's template (the \"Brand:\" and \"Category:\" "
                "labels, the separators between fields) kept: the item's own words removed, its form kept",
}
# The default: an item explained by its own words. With plain "pad", the field labels are removed along with the
# content, and an item's score is partly "explained" by the word "Brand" (bench/explain.py measures both).
DEFAULT_BASELINE = "template"
# Baselines that keep the template: its tokens are then the same at both ends of the path, get exactly zero, and
# are never removed by the faithfulness tests either (removing them would break the form, not the content).
KEEPS_TEMPLATE = frozenset({"template"})

# A Hugging Face fast tokenizer keeps its truncation setting as state that every call resets: two threads
# tokenizing with different limits (item text at max_item_tokens, a query at max_query_tokens) can cut one text
# at the other's limit. Everything in explain that tokenizes (contexts, score views, SHAP's text masker) holds
# this lock; it is held for milliseconds, never across an attribution run.
TOKENIZING = threading.RLock()


class LockedTokenizer:
    """A tokenizer whose calls hold TOKENIZING, for code that calls it on its own (SHAP's Text masker)."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer

    def __call__(self, *args, **kwargs):
        with TOKENIZING:
            return self._tokenizer(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def path_threads() -> int:
    """CPU threads for one path run: WHYREC_PATH_THREADS, else every core this process may use (at most 8)."""
    wanted = os.environ.get("WHYREC_PATH_THREADS", "")
    if wanted.strip():
        try:
            return max(1, int(wanted))
        except ValueError:
            raise ExplanationError(f"WHYREC_PATH_THREADS {wanted!r} must be a whole number of threads") from None
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


class _PathThreads:
    """Raise torch's CPU threads for the length of a path run that has the machine to itself; put them back after.

    Serving runs on one thread (views.loaders): a whole-catalog product is too small to share, and a second
    thread that waits for a busy core costs more than it gives. A path run is one large batch (n_steps points,
    forward and backward through the encoder), which two threads do in about half the time even beside other
    work (bench/explain.py). A run that starts while another is running keeps its thread's count: two runs on
    two threads each would ask four threads of two cores, and OpenMP threads spin while they wait for one.

    Under OpenMP, torch's thread count belongs to the calling thread once it has run a parallel op (a thread reads
    the process-wide count once, then keeps its own), so each run puts back the count its own thread had, and the
    process-wide count is back when the raised run ends (a thread that starts during that run reads the raised
    count, and a run in it keeps that).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._restore = threading.local()  # this thread's counts to put back, innermost last

    def __enter__(self) -> None:
        wanted = path_threads()  # a bad setting raises here, before anything changed
        found = torch.get_num_threads()
        with self._lock:
            alone = self._running == 0
            self._running += 1
        stack = self._restore.__dict__.setdefault("counts", [])
        stack.append(found)
        if alone and wanted > found:
            torch.set_num_threads(wanted)

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._running -= 1
        found = self._restore.counts.pop()
        if torch.get_num_threads() != found:
            torch.set_num_threads(found)


PATH_THREADS = _PathThreads()


@dataclass(frozen=True)
class PathSettings:
    """How Integrated Gradients walks from the baseline to the input; every explainer that integrates takes one."""

    n_steps: int = 50  # points on the path; Gauss-Legendre converges fast, see bench/explain.py for the delta
    method: str = "gausslegendre"  # Captum's quadrature rule; the Riemann rules need several times the steps
    internal_batch_size: int | None = None  # path points per forward pass; None = all at once (lower to save memory)
    baseline: str = DEFAULT_BASELINE  # what a text input starts from: a key of BASELINES; vectors start at zero

    def __post_init__(self) -> None:
        low, high = N_STEPS_RANGE
        if isinstance(self.n_steps, bool) or not isinstance(self.n_steps, int | np.integer) \
                or not low <= self.n_steps <= high:
            raise ExplanationError(f"n_steps {self.n_steps!r} must be a whole number in {low}..{high}")
        if self.method not in METHODS:
            raise ExplanationError(f"method '{self.method}' is not one of {', '.join(METHODS)}")
        if self.method != "gausslegendre" and self.n_steps < 2:
            raise ExplanationError(f"method '{self.method}' needs n_steps of at least 2, got {self.n_steps}")
        if self.internal_batch_size is not None and (
                not isinstance(self.internal_batch_size, int | np.integer) or self.internal_batch_size < 1):
            raise ExplanationError(f"internal_batch_size {self.internal_batch_size!r} must be a positive whole "
                                   "number or None")
        if self.baseline not in BASELINES:
            raise ExplanationError(f"baseline '{self.baseline}' is not one of {', '.join(BASELINES)}")

    def parameters(self) -> dict:
        return {"n_steps": int(self.n_steps), "method": self.method,
                "internal_batch_size": None if self.internal_batch_size is None else int(self.internal_batch_size),
                "baseline": self.baseline, "baseline_meaning": BASELINES[self.baseline]}


@dataclass(frozen=True)
class PathRun:
    """One IG run: per input, the attribution of each position (embedding dimensions summed), and its ends."""

    attributions: tuple[np.ndarray, ...]  # per input: (T,) for token/history inputs, (1,) for a single vector
    start: float  # f(baseline)
    end: float  # f(input)
    delta: float  # Captum's convergence delta: sum of attributions - (end - start)
    seconds: float


def device_of(recommender) -> torch.device:
    return next(recommender.net.parameters()).device


def integrate(forward: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor],
              baselines: Sequence[torch.Tensor], settings: PathSettings) -> PathRun:
    """IG of forward(*inputs) -> (B,) from `baselines`, jointly over every input; each input is (1, ..., E)."""
    from captum.attr import IntegratedGradients

    started = time.perf_counter()
    # Captum warns when inputs do not require gradients, and warnings are errors in the tests: ask up front.
    inputs = tuple(x.detach().clone().requires_grad_(True) for x in inputs)
    baselines = tuple(b.detach() for b in baselines)
    with PATH_THREADS:
        attributions, delta = IntegratedGradients(forward).attribute(
            inputs, baselines=baselines, n_steps=int(settings.n_steps), method=settings.method,
            internal_batch_size=settings.internal_batch_size, return_convergence_delta=True,
        )
    with torch.no_grad():
        start = float(forward(*baselines)[0])
        end = float(forward(*(x.detach() for x in inputs))[0])
    per_position = tuple(a.detach().sum(-1)[0].double().cpu().numpy().reshape(-1) for a in attributions)
    return PathRun(per_position, start, end, float(delta[0]), time.perf_counter() - started)


def text_baseline(view, input_ids: torch.Tensor, embeds: torch.Tensor, word_embeddings, kind: str,
                  mask_token_id: int | None, template: Sequence[int] = ()) -> torch.Tensor:
    """(1, T, H) the baseline of a text input: its special tokens kept, every other token replaced per `kind`.

    `template`: positions of the input's template tokens (ScoreView.item_template; none in a query), kept too
    by the baselines of KEEPS_TEMPLATE.
    """
    if kind == "pad":
        return view.pad_baseline(input_ids, embeds, word_embeddings)
    keep = torch.isin(input_ids, torch.tensor(view.special_tokens, device=input_ids.device)).unsqueeze(-1)
    if kind in KEEPS_TEMPLATE:
        kept = torch.zeros_like(keep)
        kept[0, list(template)] = True
        return torch.where(keep | kept, embeds, view.pad_baseline(input_ids, embeds, word_embeddings)).detach()
    if kind == "zero":
        replacement = torch.zeros_like(embeds)
    elif kind == "mask":
        if mask_token_id is None:
            raise ExplanationError("baseline 'mask' needs a tokenizer with a [MASK] token; this one has none")
        with torch.no_grad():
            replacement = word_embeddings(torch.full_like(input_ids, int(mask_token_id)))
    else:
        raise ExplanationError(f"baseline '{kind}' is not one of {', '.join(BASELINES)}")
    return torch.where(keep, embeds, replacement).detach()


def baseline_token_id(view, kind: str, mask_token_id: int | None) -> int:
    """The token that stands for a removed token: the baseline's token ([PAD] for "zero", which has none)."""
    if kind == "mask" and mask_token_id is not None:
        return int(mask_token_id)
    return int(view.pad_token_id)


def token_entries(tokenizer, input_ids: torch.Tensor, offsets: Sequence[tuple[int, int]], text: str,
                  special_tokens: Sequence[int], pad_token_id: int, template: Sequence[int] = ()) -> list[dict]:
    """One entry per real token of a (1, T) text: position, token, span in `text`, and the word it belongs to.

    [CLS]/[SEP]/[PAD] are left out: the baseline keeps the first two, so their attribution is exactly zero.
    Tokens of the text's template (positions in `template`) stay in, marked "template": True.
    A token continues the previous word when its span starts where the previous one ended and letters or digits
    meet there: WordPiece's "##" pieces, but also any other tokenizer's, read from the offsets alone.
    """
    ids = [int(i) for i in input_ids[0].tolist()]
    pieces = tokenizer.convert_ids_to_tokens(ids)
    skip = {*map(int, special_tokens), int(pad_token_id)}
    entries: list[dict] = []
    for position, (token_id, piece, (start, end)) in enumerate(zip(ids, pieces, offsets)):
        if token_id in skip:
            continue
        previous = entries[-1] if entries else None
        continues = (previous is not None and start == previous["end"] and 0 < start < len(text)
                     and text[start - 1].isalnum() and text[start].isalnum())
        word_index = previous["word_index"] + (0 if continues else 1) if previous else 0
        entries.append({"position": position, "token": piece, "start": int(start), "end": int(end),
                        "word_index": word_index, "word_start": previous["word_start"] if continues else int(start),
                        "template": position in template})
    word_end = {entry["word_index"]: entry["end"] for entry in entries}  # the last piece of each word wins
    for entry in entries:
        entry["word"] = text[entry["word_start"]:word_end[entry["word_index"]]]
    return entries
