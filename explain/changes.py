"""What changed between two models' explanations of the same item in the same context, part by part."""

from __future__ import annotations

import pandas as pd

from explain.base import TOP_LEVEL_KINDS, Attribution, Explanation
from explain.charts import PART_LABELS
from explain.errors import ExplanationError

COLUMNS = ["name", "A", "B", "change"]


def _frame(a: dict[str, float], b: dict[str, float]) -> pd.DataFrame:
    """name -> value in each; missing on a side counts 0. Largest |change| first."""
    names = list(dict.fromkeys([*a, *b]))
    frame = pd.DataFrame({"name": names, "A": [a.get(n, 0.0) for n in names], "B": [b.get(n, 0.0) for n in names]},
                         columns=COLUMNS[:3])
    frame["change"] = frame["B"] - frame["A"]
    order = frame["change"].abs().sort_values(ascending=False, kind="stable").index
    return frame.reindex(order).reset_index(drop=True)


def _terms(explanation: Explanation) -> dict[str, float]:
    """Each distinct word of the item and the query (case-folded terms), summed per text."""
    out: dict[str, float] = {}
    for kind, prefix in (("item_tokens", ""), ("query_tokens", "query: ")):
        part = explanation.part(kind)
        if part is None or not len(part):
            continue
        for name, value in zip(part.terms().names, part.terms().values):
            key = prefix + name.casefold()
            out[key] = out.get(key, 0.0) + value
    return out


def _by_name(part: Attribution | None, label=None) -> dict[str, float]:
    if part is None:
        return {}
    names = part.names if label is None else [label(name, detail) for name, detail in zip(part.names, part.details)]
    out: dict[str, float] = {}
    for name, value in zip(names, part.values):
        out[name] = out.get(name, 0.0) + value
    return out


def explanation_changes(a: Explanation, b: Explanation) -> dict[str, pd.DataFrame]:
    """Model A's and model B's explanations of one item side by side: {"parts", "words", "history", "behaviour"},
    each a frame of name, A, B, change (B − A), largest change first.

    parts: the score, base value and each top-level part's total; words: the item's and query's terms;
    history: each past interaction (by title); behaviour: each behaviour feature's SHAP value.
    """
    if (a.item_id, a.user_id, a.query) != (b.item_id, b.user_id, b.query):
        raise ExplanationError(f"the two explanations are of different things: item {a.item_id} for "
                               f"{a.user_id or a.query!r} against item {b.item_id} for {b.user_id or b.query!r}")

    def totals(explanation: Explanation) -> dict[str, float]:
        out = {"Score": explanation.score, "Base value": explanation.base_value}
        for kind in TOP_LEVEL_KINDS:
            part = explanation.part(kind)
            if part is not None:
                out[PART_LABELS[kind]] = part.total
        return out

    parts = _frame(totals(a), totals(b))
    # The score and base value stay on top: the parts below them say where the change comes from.
    fixed = parts["name"].isin(["Score", "Base value"])
    parts = pd.concat([parts[fixed].set_index("name").reindex(["Score", "Base value"]).reset_index(),
                       parts[~fixed]], ignore_index=True)

    def title(name: str, detail: dict) -> str:
        return str(detail.get("title") or name)

    return {"parts": parts, "words": _frame(_terms(a), _terms(b)),
            "history": _frame(_by_name(a.part("history"), title), _by_name(b.part("history"), title)),
            "behaviour": _frame(_by_name(a.features()), _by_name(b.features()))}
