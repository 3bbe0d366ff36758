"""The model seen across many users: which behaviour features matter, which words drive each category, how it ranks.

Three global views, each from a seeded sample so that the same settings give the same answer:

- `behaviour_importance`: exact SHAP values of the behaviour features (the same explainer, background and head
  as `explain.behaviour.BehaviourAttributor`) for every item in the top-k of a sample of users, in one batched
  SHAP call per chunk of rows rather than one explanation per item. Per row, base value + the values == the
  behaviour part of that row's score.
- `driving_words`: for a sample of (user, top item) pairs, the item's words credited most by Integrated
  Gradients (the item-word part of `explain`), counted per item category.
- `metrics_comparison`: the model's ranking metrics beside its baselines', from the checkpoint's metrics and
  its evaluation report (`python -m model evaluate --json <checkpoint>/evaluation.json`).

Long runs call `progress(done, total, label)` as they go; the label counts the users done ("12 / 200 users").
Both results turn into JSON and back (`to_dict`, `from_dict`), so they can be computed ahead of time
(explain.insights_file).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import numpy as np
import pandas as pd

from data.features import FEATURES
from explain.base import Attribution
from explain.behaviour import BACKGROUND_SEED, BACKGROUND_SIZE, behaviour_function, context_background, exact_shap
from explain.errors import ExplanationError
from explain.explanations import explain

Progress = Callable[[int, int, str], None]

SAMPLE_SEED = 0  # which users are sampled: the same ones every run, so pages and reports agree
DEFAULT_USERS = 100  # users whose top-k rows the behaviour importance explains
DEFAULT_K = 5  # their top-k: the items they are actually shown
DEFAULT_PAIRS = 60  # (user, top item) pairs whose words are explained: ~0.5 s each with MiniLM at 16 steps
DEFAULT_STEPS = 16  # enough to rank an item's words; the explanation panel uses more for exact values
TOP_WORDS = 3  # an item's words that count as "driving" it
MAX_SAMPLE = 10_000  # users or pairs: beyond this a sample says nothing more, it only takes longer
# data.schema.item_text labels two fields of every item's text ("Brand: ...", "Category: ..."): words every item
# has say nothing about why one item was chosen, so they are left out of the driving words.
FIELD_LABELS = ("Brand", "Category")
NO_CATEGORY = "(no category)"

EVALUATION = "evaluation.json"  # the evaluation report a checkpoint directory may hold beside metrics.json
EVALUATE_COMMAND = "python -m model evaluate --model {model} --json {model}/evaluation.json"
METRICS = ("NDCG@10", "HR@10", "MRR", "NDCG@5", "HR@5", "NDCG@20", "HR@20", "coverage@10")
MODEL_NAMES = ("model", "model without behaviour")  # the rest of an evaluation's scorers are baselines
SPLITS = {"valid": ("model", "validation"), "valid_stage1": ("model without behaviour", "validation")}


def _noop(done: int, total: int, label: str) -> None:
    pass


def _count(value, name: str, high: int = MAX_SAMPLE) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not 1 <= value <= high:
        raise ExplanationError(f"{name} {value!r} must be a whole number in 1..{high}")
    return int(value)


def sample_users(recommender, n_users: int, seed: int = SAMPLE_SEED) -> list[str]:
    """Up to `n_users` users with a history, seeded; a smaller n gives the first users of a larger one."""
    n_users = _count(n_users, "the number of users")
    histories, users = recommender.histories, np.asarray(recommender.user_ids)
    # Users are drawn in a seeded order and checked one by one until enough have a history: the work grows with
    # n_users, not with the shop (a history is built when asked for; every user of the events has one).
    sample = []
    for i in np.random.default_rng(seed).permutation(len(users)):
        if len(histories.get(str(users[i]), ())):
            sample.append(str(users[i]))
            if len(sample) == n_users:
                break
    if not sample:
        raise ExplanationError("no user has a history: there is nothing to sample")
    return sample


def _top_items(recommender, user_id: str, k: int) -> list[str]:
    """The user's top-k item ids, by the one top-k rule the Recommend page uses."""
    return [item.item_id for item in recommender.recommend(user_id=user_id, k=k)]


# ---- behaviour features ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BehaviourImportance:
    """SHAP values of the behaviour features over a sample of (user, recommended item) rows.

    Row i is user_ids[i]'s item item_ids[i] at rank ranks[i]; column j is data.features.FEATURES[j]. For every
    row, base_values[i] + values[i].sum() == scores[i] (the behaviour part of its score) up to float rounding. Each
    user's rows are explained against that user's own background (explain.behaviour, "context"), as one item's
    explanation is, so the two agree; base_values[i] is the head's mean over row i's user's background.
    """

    user_ids: tuple[str, ...]
    item_ids: tuple[str, ...]
    ranks: tuple[int, ...]
    features: np.ndarray  # (n, F) raw feature values, as the model reads them
    values: np.ndarray  # (n, F) SHAP values, in score units
    scores: np.ndarray  # (n,) the behaviour head's output for each row
    base_values: np.ndarray  # (n,) the head's mean output over each row's SHAP background
    parameters: dict = field(default_factory=dict)  # sample, background, checkpoint and seconds

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def completeness_gap(self) -> float:
        """The largest |base value + sum of a row's values - its score| over the rows (0 is exact)."""
        if not len(self):
            return 0.0
        return float(np.max(np.abs(self.base_values + self.values.sum(axis=1) - self.scores)))

    def to_dict(self) -> dict:
        return {"user_ids": list(self.user_ids), "item_ids": list(self.item_ids), "ranks": list(self.ranks),
                "features": self.features.tolist(), "values": self.values.tolist(), "scores": self.scores.tolist(),
                "base_values": self.base_values.tolist(), "parameters": self.parameters}

    @classmethod
    def from_dict(cls, data: dict) -> BehaviourImportance:
        """The inverse of `to_dict`; ExplanationError when the rows do not fit together or the features changed."""
        try:
            user_ids, item_ids = tuple(map(str, data["user_ids"])), tuple(map(str, data["item_ids"]))
            ranks = tuple(int(r) for r in data["ranks"])
            n, width = len(user_ids), len(FEATURES)
            features, values = (np.asarray(data[key], dtype=np.float64).reshape(n, width)
                                for key in ("features", "values"))
            scores, base_values = (np.asarray(data[key], dtype=np.float64).reshape(n)
                                   for key in ("scores", "base_values"))
            parameters = dict(data["parameters"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExplanationError(f"behaviour importance is incomplete or does not fit {len(FEATURES)} features "
                                   f"({exc})") from exc
        if not len(item_ids) == len(ranks) == n:
            raise ExplanationError(f"behaviour importance has {n} users, {len(item_ids)} items, {len(ranks)} ranks")
        return cls(user_ids, item_ids, ranks, features, values, scores, base_values, parameters)

    def summary(self) -> pd.DataFrame:
        """One row per feature, the most important first: mean |SHAP|, mean SHAP and the range of its values."""
        rows = []
        for j, spec in enumerate(FEATURES):
            column = self.features[:, j]
            rows.append({
                "feature": spec.name, "label": spec.label, "unit": spec.unit, "meaning": spec.meaning,
                "mean_abs_shap": float(np.abs(self.values[:, j]).mean()) if len(self) else 0.0,
                "mean_shap": float(self.values[:, j].mean()) if len(self) else 0.0,
                "value_min": float(column.min()) if len(self) else 0.0,
                "value_max": float(column.max()) if len(self) else 0.0,
            })
        frame = pd.DataFrame(rows)
        return frame.sort_values("mean_abs_shap", ascending=False, kind="stable").reset_index(drop=True)


def behaviour_importance(recommender, n_users: int = DEFAULT_USERS, k: int = DEFAULT_K, seed: int = SAMPLE_SEED,
                         *, background_size: int = BACKGROUND_SIZE, progress: Progress | None = None
                         ) -> BehaviourImportance:
    """Exact SHAP values of the behaviour features for the top-k items of `n_users` sampled users, each user's
    rows against random items for that user, as one item's explanation is."""
    progress = progress or _noop
    started = time.perf_counter()
    k = _count(k, "k", len(recommender.item_ids))
    users = sample_users(recommender, n_users, seed)
    score = behaviour_function(recommender)
    user_of, item_ids, ranks, shown = [], [], [], []  # shown: (context, (k, F) features) per user with a list
    total = 2 * len(users)  # ranking the users, then explaining their rows
    for done, user in enumerate(users, start=1):
        top = _top_items(recommender, user, k)
        if top:
            context = recommender.context(user)
            shown.append((context, recommender.behaviour_features(context, recommender.item_positions(top))))
            user_of.extend([user] * len(top))
            item_ids.extend(top)
            ranks.extend(range(1, len(top) + 1))
        progress(done, total, f"ranked {done} / {len(users)} users")
    values, base_values = [np.zeros((0, len(FEATURES)))], [np.zeros(0)]
    for done, (context, rows) in enumerate(shown, start=1):
        reference = context_background(recommender, context, background_size, BACKGROUND_SEED)
        user_values, user_bases = exact_shap(score, reference, rows.astype(np.float64))
        values.append(user_values)
        base_values.append(user_bases)
        progress(len(users) + math.ceil(len(users) * done / len(shown)), total,
                 f"SHAP values for {done} / {len(shown)} users")
    progress(total, total, "done")
    features = np.concatenate([np.zeros((0, len(FEATURES))), *(rows for _, rows in shown)]).astype(np.float64)
    parameters = {"n_users": len(users), "k": k, "seed": seed, "rows": len(features), "algorithm": "exact",
                  "masker": "independent", "background": "random items for each user, at the serving moment",
                  "background_size": min(background_size, len(recommender.item_ids)),
                  "background_seed": BACKGROUND_SEED,
                  "checkpoint_id": recommender.checkpoint_id, "seconds": time.perf_counter() - started}
    return BehaviourImportance(tuple(user_of), tuple(item_ids), tuple(ranks), features, np.concatenate(values),
                               score(features) if len(features) else np.zeros(0), np.concatenate(base_values),
                               parameters)


# ---- words -------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DrivingWords:
    """The item words credited most by Integrated Gradients, for a sample of (user, top item) pairs.

    `pairs`: one row per pair (user_id, item_id, title, category, score). `words`: one row per (pair, word among
    its item's top words): user_id, item_id, category, word (lower case), value (its attribution, summed over
    the word's occurrences in the item text), rank (1 = credited most).
    """

    pairs: pd.DataFrame
    words: pd.DataFrame
    parameters: dict = field(default_factory=dict)

    PAIR_COLUMNS = ("user_id", "item_id", "title", "category", "score")
    WORD_COLUMNS = ("user_id", "item_id", "category", "word", "value", "rank")

    def to_dict(self) -> dict:
        return {"pairs": self.pairs.to_dict(orient="records"), "words": self.words.to_dict(orient="records"),
                "parameters": self.parameters}

    @classmethod
    def from_dict(cls, data: dict) -> DrivingWords:
        """The inverse of `to_dict`; ExplanationError when a row lacks a column."""
        try:
            pairs, words = (pd.DataFrame.from_records(list(data[key]), columns=list(columns))
                            for key, columns in (("pairs", cls.PAIR_COLUMNS), ("words", cls.WORD_COLUMNS)))
            parameters = dict(data["parameters"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ExplanationError(f"driving words are incomplete ({exc})") from exc
        if pairs.isna().any().any() or words.isna().any().any():
            raise ExplanationError("driving words are incomplete (a row lacks a column)")
        return cls(pairs, words.astype({"value": float, "rank": int}), parameters)

    def by_category(self, per_category: int = 5) -> pd.DataFrame:
        """Per category, its most frequent driving words: in how many of its items' top words, and how strongly.

        Columns: category, word, items (pairs whose item has the word among its top words), pairs (the
        category's pairs), share (items / pairs), mean_value (the word's mean attribution where it drives).
        Categories by their number of pairs, words by items then mean_value.
        """
        columns = ["category", "word", "items", "pairs", "share", "mean_value"]
        if self.words.empty:
            return pd.DataFrame(columns=columns)
        pairs = self.pairs.groupby("category").size().rename("pairs")
        grouped = self.words.groupby(["category", "word"]).agg(items=("item_id", "size"), mean_value=("value", "mean"))
        table = grouped.reset_index().join(pairs, on="category")
        table["share"] = table["items"] / table["pairs"]
        table = table.sort_values(["pairs", "category", "items", "mean_value"],
                                  ascending=[False, True, False, False], kind="stable")
        return table.groupby("category", sort=False).head(per_category)[columns].reset_index(drop=True)


def item_words(explanation, top: int = TOP_WORDS) -> list[tuple[str, float]]:
    """The item's `top` terms (a word's occurrences summed, case-folded) with the largest positive attribution.

    Punctuation and the item text's template (tokens marked "template"; in explanations saved without the mark,
    FIELD_LABELS before a colon) are left out.
    """
    part = explanation.part("item_tokens")
    if part is None or not len(part):
        return []
    written = dict(sorted((detail["word_index"], detail["word"]) for detail in part.details))
    labels = {index for index, following in pairwise(written)
              if written[index] in FIELD_LABELS and written[following] == ":"}
    keep = [j for j, detail in enumerate(part.details)
            if detail["word_index"] not in labels and not detail.get("template")
            and any(ch.isalnum() for ch in detail["word"])]
    if not keep:
        return []
    kept = Attribution(part.kind, tuple(part.names[j] for j in keep), tuple(part.values[j] for j in keep),
                       part.base_value, part.method, part.parameters, part.completeness_gap, part.seconds,
                       tuple(part.details[j] for j in keep))
    terms = kept.terms()
    ranked = sorted(((name.casefold(), value) for name, value in zip(terms.names, terms.values) if value > 0),
                    key=lambda term: -term[1])
    return ranked[:top]


def driving_words(recommender, n_pairs: int = DEFAULT_PAIRS, seed: int = SAMPLE_SEED, n_steps: int = DEFAULT_STEPS,
                  *, top: int = TOP_WORDS, progress: Progress | None = None) -> DrivingWords:
    """Explain the top item of `n_pairs` sampled users and collect each item's `top` driving words."""
    progress = progress or _noop
    started = time.perf_counter()
    top = _count(top, "top words", 50)
    users = sample_users(recommender, _count(n_pairs, "the number of pairs"), seed)
    items = recommender.items.set_index("item_id")
    pairs, words = [], []
    for done, user in enumerate(users, start=1):
        for item_id in _top_items(recommender, user, 1):
            explanation = explain(recommender, item_id, user_id=user, n_steps=n_steps, drill_down=0)
            category = items.at[item_id, "category"]
            category = NO_CATEGORY if pd.isna(category) or not str(category).strip() else str(category)
            pairs.append({"user_id": user, "item_id": item_id, "title": explanation.item_title,
                          "category": category, "score": explanation.score})
            for rank, (word, value) in enumerate(item_words(explanation, top), start=1):
                words.append({"user_id": user, "item_id": item_id, "category": category, "word": word,
                              "value": value, "rank": rank})
        progress(done, len(users), f"explained {done} / {len(users)} users' top items")
    parameters = {"n_pairs": len(pairs), "seed": seed, "n_steps": n_steps, "top": top,
                  "checkpoint_id": recommender.checkpoint_id, "seconds": time.perf_counter() - started}
    return DrivingWords(pd.DataFrame(pairs, columns=list(DrivingWords.PAIR_COLUMNS)),
                        pd.DataFrame(words, columns=list(DrivingWords.WORD_COLUMNS)), parameters)


# ---- metrics -----------------------------------------------------------------------------------------------------

def read_evaluation(directory: str | Path, checkpoint_id: str | None = None) -> dict | None:
    """The evaluation report in a checkpoint directory (EVALUATION), or None when it has none.

    A report that is not one, or that evaluated another checkpoint, raises ExplanationError saying how to redo it.
    """
    path = Path(directory) / EVALUATION
    if not path.exists():
        return None
    redo = f"run `{EVALUATE_COMMAND.format(model=directory)}` again"
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExplanationError(f"{path}: not a readable evaluation report ({exc}); {redo}") from exc
    if not isinstance(report, dict) or not isinstance(report.get("models"), dict):
        raise ExplanationError(f"{path}: has no 'models' section, so it is no evaluation report; {redo}")
    evaluated = report.get("checkpoint_id")
    if checkpoint_id is not None and evaluated is not None and evaluated != checkpoint_id:
        raise ExplanationError(f"{path}: evaluates checkpoint {evaluated}, but the model is {checkpoint_id}; {redo}")
    return report


def metrics_comparison(metrics: dict | None, evaluation: dict | None = None) -> pd.DataFrame:
    """The model's ranking metrics beside its baselines', one row per (scorer, split).

    `metrics`: the checkpoint's metrics (metrics.json: validation figures from training). `evaluation`: a report of
    model.evaluate.evaluate_model (the model and every baseline on the same targets). Columns: name, role
    ("model" or "baseline"), split, users, then METRICS (NaN where a source lacks one).
    """
    rows = []
    for key, (name, split) in SPLITS.items():
        figures = (metrics or {}).get(key)
        if isinstance(figures, dict):
            rows.append({"name": name, "role": "model", "split": split, "users": figures.get("users"), **figures})
    if evaluation:
        split = str(evaluation.get("stage", "test"))
        for name, figures in evaluation["models"].items():
            if isinstance(figures, dict):
                role = "model" if name in MODEL_NAMES else "baseline"
                rows.append({"name": str(name), "role": role, "split": split, "users": figures.get("users"),
                             **figures})
    columns = ["name", "role", "split", "users", *METRICS]
    frame = pd.DataFrame(rows).reindex(columns=columns)
    for metric in METRICS:
        frame[metric] = pd.to_numeric(frame[metric], errors="coerce")
    return frame
