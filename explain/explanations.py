"""Whole explanations: one score split into all its parts (`explain`), or the margin between two (`explain_pair`).

score = base_value + item_tokens + query_tokens + history + collaborative + behaviour   (+ completeness_gap)

base_value = forward(baseline; no history) + E[behaviour | no history]: the context-item part of the score
(ScoreView.forward) with the item and query text at the IG baseline, no ID vector and no history, plus the
behaviour head's mean over the SHAP background read with the history removed. Then

    history       what removing the user's past items does (every event on them, and everything computed from
                  them: the user state and the history-derived behaviour features), split over the past items by
                  their Shapley values in that removal game (explain.history);
    item_tokens, query_tokens, collaborative
                  the words and the ID vector, by Integrated Gradients with the history kept and removed, half
                  each (explain.tokens): history and words share the dot product as two players of one game;
    behaviour     the item's own behaviour features: SHAP over the features with the history removed (the item's
                  popularity, conversion and age; the user's features read "no history" for every item alike, so
                  they get exactly 0: what the history adds through them is in the history part).

Two drill-downs re-explain part of that and stay out of the sum: history_tokens (the words inside the top past
items) and behaviour_full (SHAP over every feature as the history sets it, against the same context's other
items: which features the score reads, affinities and recency included; what the history adds through them is
counted in the past items).

The item bias is not in the base value: it sits in the collaborative part as its own exact term. `score` is the
model's own score (Recommender.score_parts); base_value + total - score is the completeness gap: IG's
convergence delta, plus float rounding and any disagreement between the differentiable view and the served score
(flagged "view_mismatch" beyond rounding).

A pair (A above B?) explains score(A) - score(B) with the same parts, part by part A's minus B's: entries
that name the same thing subtract (query tokens, past items, behaviour features, the ID vector and bias
terms, history words); each item's own tokens stay separate, named "A: ..." and "B: ..." (B's negated).
The base values subtract too: the behaviour mean cancels exactly and the IG baselines differ only in the
items' [PAD] texts, so the pair's base value is near 0 and exactly 0 when both items have as many tokens.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from data.errors import WhyRecError
from explain.base import Attribution, Explanation
from explain.behaviour import BehaviourAttributor
from explain.errors import ExplanationError
from explain.gradients import DEFAULT_BASELINE, TOKENIZING, PathSettings
from explain.history import DRILL_DOWN_UNITS, HistoryAttributor, HistoryTokenAttributor
from explain.tokens import TokenAttributor, joint_change
from model.serving import empty_events

# The flags an explanation may carry, and what each means.
FLAGS = {
    "no_history": "the context has no history: the history part is empty",
    "history_truncated": "the history is longer than the model reads; only the most recent units count",
    "query_truncated": "the query was cut to the encoder's token limit; only the kept tokens are attributed",
    "empty_item_text": "the item has no text: its token part is empty and contributes nothing",
    "item_text_truncated": "the item text is longer than the model reads; later words are not attributed",
    "large_completeness_gap": "IG's convergence delta exceeds 5% of what it explains: raise n_steps",
    "view_mismatch": "the differentiable view's score differs from the served score by more than rounding",
    "synthetic_clock": "the data has an order but no clock: ages and clock-based features are in synthetic time",
    "pair": "a contrast: the score is score(A) - score(B)",
}
GAP_SHARE = 0.05  # a delta above 5% of |f(x) - f(baseline)| says the path was too coarse
VIEW_TOLERANCE = 1e-4  # relative; float32 recomputation of the text embedding stays ~1e-6 off


@dataclass
class _Side:
    """One item's explanation before it becomes an Explanation: what the pair needs from each item."""

    item_id: str
    title: str
    context: object
    view: object
    score: float
    parts: dict[str, Attribution]
    flags: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timing: dict[str, float] = field(default_factory=dict)


def explain(recommender, item_id, user_id=None, query=None, n_steps: int = 50, *,
            history: pd.DataFrame | None = None, baseline: str = DEFAULT_BASELINE, method: str = "gausslegendre",
            internal_batch_size: int | None = None, drill_down: int = DRILL_DOWN_UNITS,
            feature_overrides: dict[str, float] | None = None, at=None) -> Explanation:
    """Why `item_id` got its score for a user, a query or both; `history` replaces the user's own and
    `feature_overrides` sets behaviour features for every item (what-if; see model.whatif). `at` explains the
    score as of that moment, from the events before it alone (history and features), as the model saw it then."""
    started = time.perf_counter()
    settings = _settings(n_steps, method, internal_batch_size, baseline, drill_down)
    context = explained_context(recommender, user_id, query, history, feature_overrides, at)
    side = _side(recommender, context, item_id, history, settings)
    _drill(recommender, [side], settings, drill_down)
    side.timing["total"] = time.perf_counter() - started
    return _explanation(recommender, side, side.score, _base_value(side), list(side.parts.values()))


def explain_pair(recommender, item_a, item_b, user_id=None, query=None, n_steps: int = 50, *,
                 history: pd.DataFrame | None = None, baseline: str = DEFAULT_BASELINE, method: str = "gausslegendre",
                 internal_batch_size: int | None = None, drill_down: int = DRILL_DOWN_UNITS,
                 feature_overrides: dict[str, float] | None = None, at=None) -> Explanation:
    """Why A scores above (or below) B for the same user and query: the margin score(A) - score(B), part by part."""
    started = time.perf_counter()
    settings = _settings(n_steps, method, internal_batch_size, baseline, drill_down)
    context = explained_context(recommender, user_id, query, history, feature_overrides, at)
    a = _side(recommender, context, item_a, history, settings)
    b = _side(recommender, context, item_b, history, settings)
    _drill(recommender, [a, b], settings, drill_down)
    parts = [_contrast(a.parts[kind], b.parts[kind]) for kind in a.parts]
    side = _Side(a.item_id, a.title, context, a.view, a.score - b.score, {},
                 flags=[*dict.fromkeys([*a.flags, *b.flags, "pair"])],
                 notes=[*dict.fromkeys([*a.notes, *(f"B: {n}" for n in b.notes if n not in a.notes)])],
                 timing={k: a.timing.get(k, 0.0) + b.timing.get(k, 0.0) for k in dict.fromkeys([*a.timing, *b.timing])})
    side.timing["total"] = time.perf_counter() - started
    return _explanation(recommender, side, a.score - b.score, _base_value(a) - _base_value(b), parts,
                        versus=(b.item_id, b.title))


# ---- one item ---------------------------------------------------------------------------------------------------

def _settings(n_steps, method, internal_batch_size, baseline, drill_down) -> PathSettings:
    if isinstance(drill_down, bool) or not isinstance(drill_down, int) or drill_down < 0:
        raise ExplanationError(f"drill_down {drill_down!r} must be a whole number of history items, 0 or more")
    return PathSettings(n_steps, method, internal_batch_size, baseline)


def explained_context(recommender, user_id, query, history, feature_overrides=None, at=None):
    """The context an explanation reads (faithfulness rebuilds it the same way); bad input -> ExplanationError."""
    if at is not None:
        try:
            at = pd.Timestamp(at)
        except (TypeError, ValueError) as exc:
            raise ExplanationError(f"at {at!r} is not a moment in time (give an ISO date or timestamp)") from exc
        at = at.tz_localize("UTC") if at.tzinfo is None else at.tz_convert("UTC")
    try:
        with TOKENIZING:
            # Exact: the float encoder, which the gradients walk through, encodes the query (model.quantize).
            return recommender.context(user_id, query, history=history, feature_overrides=feature_overrides,
                                       at=at, exact=True)
    except WhyRecError as exc:
        raise ExplanationError(f"cannot explain for this context: {exc}") from exc


def _side(recommender, context, item_id, history, settings: PathSettings) -> _Side:
    from model.serving import score_view

    timing: dict[str, float] = {}
    clock = time.perf_counter()
    try:
        position = int(recommender.item_positions([str(item_id)])[0])
        with TOKENIZING:
            view = score_view(recommender, context, position, history=history)
        served = recommender.score_parts(context, np.array([position]), features=view.features[None],
                                         history=history)
    except WhyRecError as exc:
        raise ExplanationError(f"cannot explain item '{item_id}': {exc}") from exc
    score = float(sum(value[0] for value in served.values()))
    timing["view"] = time.perf_counter() - clock

    item_tokens, query_tokens, collaborative = TokenAttributor(settings).attribute(recommender, context, view)
    timing["integrated_gradients"] = item_tokens.seconds
    try:
        (history_part,) = HistoryAttributor(settings.baseline).attribute(recommender, context, view, history)
    except WhyRecError as exc:
        raise ExplanationError(f"cannot remove the past items of this context: {exc}") from exc
    timing["history"] = history_part.seconds
    # The item's own behaviour: its features with the history removed (what the history adds is the history's).
    no_history = empty_events()
    own = recommender.behaviour_features(context, np.array([position]), history=no_history)[0]
    (behaviour,) = BehaviourAttributor().attribute(recommender, context, view, history=no_history, features=own)
    # And every feature as the history sets it, as a drill-down: the view an analyst reads features in.
    (full,) = BehaviourAttributor().attribute(recommender, context, view, history=history)
    timing["shap"] = behaviour.seconds + full.seconds
    parts = {p.kind: p for p in (item_tokens, query_tokens, history_part, collaborative, behaviour,
                                 dataclasses.replace(full, kind="behaviour_full"))}
    side = _Side(str(item_id), str(recommender.items.iloc[position].title), context, view, score, parts,
                 timing=timing)
    _flag(recommender, side)
    return side


def _flag(recommender, side: _Side) -> None:
    context, view, parts = side.context, side.view, side.parts
    side.notes.extend(context.notes)

    def flag(name: str, note: str | None = None) -> None:
        side.flags.append(name)
        if note:
            side.notes.append(note)

    if len(view.history_index) == 0:
        said = any("no history" in note for note in context.notes)
        flag("no_history", None if said else "no history to read: the history part is empty")
    elif len(view.history_index) < len(context.history):
        flag("history_truncated", f"the history has {len(context.history)} units; the model reads the last "
                                  f"{len(view.history_index)}")
    if context.query_truncated:
        flag("query_truncated")  # the context's own note says so already
    if len(parts["item_tokens"]) == 0:
        flag("empty_item_text", f"item '{side.item_id}' has no text: nothing to attribute to its words")
    # Read from the offsets rather than by tokenising again: one fewer call into the shared tokenizer.
    read_to, written_to = max((end for _, end in view.item_offsets), default=0), len(view.item_text.rstrip())
    if read_to < written_to:
        flag("item_text_truncated", f"the model reads the item text up to character {read_to} of {written_to} "
                                    f"({view.item_input_ids.shape[1]} tokens)")
    joint, behaviour = parts["item_tokens"], parts["behaviour"]
    moved = abs(joint_change(parts))
    if abs(joint.completeness_gap) > max(GAP_SHARE * moved, 1e-4):
        flag("large_completeness_gap", f"IG's convergence delta is {joint.completeness_gap:+.4g} against "
                                       f"{moved:.4g} explained; raise n_steps (now {joint.parameters['n_steps']})")
    # What the view scores: the base value plus every part, less what each run over-claims.
    view_score = _base_value(side) + sum(p.total for p in parts.values() if p.in_total) \
        - joint.completeness_gap - behaviour.completeness_gap - parts["history"].completeness_gap
    if abs(view_score - side.score) > VIEW_TOLERANCE * max(1.0, abs(side.score)):
        flag("view_mismatch", f"the differentiable view scores {view_score:.6g}, the model {side.score:.6g}: the "
                              "difference is in the completeness gap")
    if recommender.dataset.meta.synthetic_clock:
        flag("synthetic_clock", "the data has no clock: history ages are in synthetic time")


def _base_value(side: _Side) -> float:
    return side.parts["item_tokens"].base_value + side.parts["behaviour"].base_value


def _drill(recommender, sides: list[_Side], settings: PathSettings, top: int) -> None:
    """Open the top history units to their words; for a pair, the units where A and B differ most, for both."""
    history = [side.parts["history"] for side in sides]
    if top == 0 or len(sides[0].view.history_index) == 0:
        return
    margin: dict[int, float] = {}
    for sign, part in zip((1.0, -1.0), history):
        for value, detail in zip(part.values, part.details):
            if detail.get("unit") is not None:  # a past item the user state reads as a unit
                margin[detail["unit"]] = margin.get(detail["unit"], 0.0) + sign * value
    units = sorted(margin, key=lambda u: -abs(margin[u]))[:top]
    attributor = HistoryTokenAttributor(settings, top=top)
    for side in sides:
        (part,) = attributor.attribute(recommender, side.context, side.view, units=units)
        side.parts["history_tokens"] = part
        side.timing["history_tokens"] = part.seconds


def _explanation(recommender, side: _Side, score: float, base_value: float, parts: list[Attribution],
                 versus: tuple[str, str] | None = None) -> Explanation:
    context = side.context
    return Explanation(
        item_id=side.item_id, item_title=side.title, user_id=context.user_id, query=context.query, mode=context.mode,
        moment=pd.Timestamp(context.moment_ns, tz="UTC").isoformat(), checkpoint_id=recommender.checkpoint_id,
        score=score, base_value=base_value, parts=tuple(parts), flags=tuple(dict.fromkeys(side.flags)),
        notes=tuple(dict.fromkeys(side.notes)), timing=side.timing,
        versus_item_id=None if versus is None else versus[0], versus_item_title=None if versus is None else versus[1],
    )


# ---- a pair --------------------------------------------------------------------------------------------------

def _entry_key(kind: str, name: str, detail: dict):
    """What an entry is about, so that A's and B's entries about the same thing subtract."""
    if kind in ("item_tokens", "query_tokens", "history_tokens"):
        return detail.get("item_id"), detail["position"]
    if kind == "history":
        return detail.get("item_id") or name  # the group of the oldest items has no single id
    return name


def _contrast(a: Attribution, b: Attribution) -> Attribution:
    """A's part minus B's: entries about the same thing subtract; each item's own tokens stay, B's negated."""
    merged: dict = {}
    for side, sign, part in (("A", 1.0, a), ("B", -1.0, b)):
        for name, value, detail in zip(part.names, part.values, part.details):
            if part.kind == "item_tokens":  # each item's own words: never the same thing, whatever they spell
                key = (side, detail["position"])
                detail = {**detail, "side": side}
                name = f"{side}: {name}"
            else:
                key = _entry_key(part.kind, name, detail)
            entry = merged.setdefault(key, {"name": name, "value": 0.0, "detail": detail, "sides": []})
            entry["value"] += sign * value
            entry["sides"].append(side)
            # The feature's value for each item: "value" is A's.
            if part.kind in ("behaviour", "behaviour_full") and side == "B":
                entry["detail"] = {**entry["detail"], "value_b": detail.get("value")}
    names = [entry["name"] for entry in merged.values()]
    values = [entry["value"] for entry in merged.values()]
    details = [{**entry["detail"], "sides": entry["sides"]} for entry in merged.values()]
    parameters = {**a.parameters, "contrast": "A - B"}
    return Attribution(a.kind, tuple(names), tuple(values), a.base_value - b.base_value, a.method, parameters,
                       a.completeness_gap - b.completeness_gap, a.seconds + b.seconds, tuple(details))
