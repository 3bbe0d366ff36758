"""The result types every explainer returns: one `Attribution` per part of a score, one `Explanation` per score.

The rule that holds them together: base_value + the sum of the values of every part that is `in_total` equals
the score, up to `completeness_gap`. The in-total parts are the top-level ones (TOP_LEVEL_KINDS):

    score = base_value + item_tokens + query_tokens + history + collaborative + behaviour

    history        past interactions: each past item's Shapley value in the game of removing it (every event on
                   it, and the user state and history-derived behaviour features rebuilt; explain.history)
    item_tokens, query_tokens, collaborative
                   the item's and the query's words and the item's ID vector (Integrated Gradients; the item bias
                   as an exact term of collaborative)
    behaviour      the item's own behaviour features (SHAP, with the history removed)

A drill-down re-explains part of one of them and is left out of the sum: "history_tokens" (the words inside the
most important past items) and "behaviour_full" (SHAP over every behaviour feature as the history sets it).

JSON schema (`Explanation.to_dict`, `schema_version` 2); every float is a JSON number, never NaN:

    {
      "schema": "whyrec-explanation", "schema_version": 2,
      "item_id": str, "item_title": str,
      "versus_item_id": str | null, "versus_item_title": str | null,  # a pair: the score is score(A) - score(B)
      "user_id": str | null, "query": str | null,
      "mode": "user" | "query" | "user+query" | "popularity",
      "moment": str,              # ISO-8601 UTC: the moment scored; features and history ages are taken there
      "checkpoint_id": str,       # the model that was explained
      "score": float,             # the model's own score (Recommender.score_parts, summed)
      "base_value": float,        # the score of the baseline input (see explain.explanations)
      "total": float,             # derived: the sum of the in-total parts' values
      "completeness_gap": float,  # derived: base_value + total - score
      "parts": [{
          "kind": "item_tokens" | "query_tokens" | "history" | "collaborative" | "behaviour" | "history_tokens"
                  | "behaviour_full",
          "in_total": bool,       # derived from kind: false for the drill-downs
          "names": [str], "values": [float],
          "details": [object],    # one per name: token position, span, word and "template" (a field label or
                                  # separator of the item text); past item id, title, events, age and measured
                                  # removal_effect; feature unit, value and background_mean (a pair adds value_b:
                                  # B's value; sides: which items), ...
          "base_value": float,    # the output this part's run starts from; shared by the parts of one run
          "method": str,          # "integrated_gradients", "shapley_removal", "shap_exact"
          "parameters": object,   # n_steps, baseline, internal_batch_size, background size, players, run, ...
          "completeness_gap": float,  # the run's sum of attributions - (f(input) - f(baseline)); shared per run
          "seconds": float
      }],
      "flags": [str],             # machine-readable: "no_history", "query_truncated", "empty_item_text", ...
      "notes": [str],             # the same for a person, plus anything else worth saying
      "timing": {str: float}      # seconds per stage and "total"
    }

Derived fields are written for readers and recomputed on load. Loading rejects another schema, another
version and unknown keys, so a reader never guesses. Version 1 (before the history part was the removal game:
its history values were IG over the user state's inputs, its behaviour part SHAP with the history) is refused
with a message that says so: its parts do not mean what version 2's do.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

import numpy as np

from explain.errors import ExplanationError

SCHEMA = "whyrec-explanation"
SCHEMA_VERSION = 2
TOP_LEVEL_KINDS = ("item_tokens", "query_tokens", "history", "collaborative", "behaviour")  # they add up
DRILL_DOWN_KINDS = ("history_tokens", "behaviour_full")  # re-explain part of a top-level part: outside the sum
KINDS = TOP_LEVEL_KINDS + DRILL_DOWN_KINDS
TOKEN_KINDS = ("item_tokens", "query_tokens", "history_tokens")


@dataclass(frozen=True)
class Attribution:
    """One part of a score split over named inputs: tokens, history items, behaviour features or the item's ID."""

    kind: str  # one of KINDS
    names: tuple[str, ...]  # what each value is attributed to, as a person reads it
    values: tuple[float, ...]  # same length as names; in score units
    base_value: float  # the output this part's run starts from (its baseline); shared by the parts of one run
    method: str  # "integrated_gradients", "shap_exact"
    parameters: dict  # everything needed to repeat the run: n_steps, baseline, internal_batch_size, ...
    completeness_gap: float = 0.0  # sum(attributions) - (f(input) - f(baseline)) of the run; shared per run
    seconds: float = 0.0  # wall time of the run that produced this part
    details: tuple[dict, ...] = ()  # one dict per name: position, span, item id, unit, actual value, ...

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ExplanationError(f"attribution kind '{self.kind}' is not one of {', '.join(KINDS)}")
        names = tuple(str(name) for name in self.names)
        values = tuple(float(value) for value in self.values)
        details = tuple(_plain(detail) for detail in self.details) or tuple({} for _ in names)
        if len(values) != len(names) or len(details) != len(names):
            raise ExplanationError(f"{self.kind}: {len(names)} names, {len(values)} values and {len(details)} "
                                   "details; they must be as many")
        bad = [name for name, value in zip(names, values) if not math.isfinite(value)]
        if bad or not math.isfinite(self.base_value) or not math.isfinite(self.completeness_gap):
            raise ExplanationError(f"{self.kind}: non-finite attribution (first at {bad[:1] or 'base/gap'})")
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "details", details)
        object.__setattr__(self, "base_value", float(self.base_value))
        object.__setattr__(self, "completeness_gap", float(self.completeness_gap))
        object.__setattr__(self, "seconds", float(self.seconds))
        object.__setattr__(self, "parameters", _plain(self.parameters))

    @property
    def in_total(self) -> bool:
        """Whether this part counts towards base_value + total == score (drill-downs do not)."""
        return self.kind in TOP_LEVEL_KINDS

    @property
    def total(self) -> float:
        return math.fsum(self.values)

    def __len__(self) -> int:
        return len(self.names)

    def top(self, n: int = 5) -> list[tuple[str, float, dict]]:
        """The n entries with the largest |value|, largest first: (name, value, details)."""
        order = sorted(range(len(self)), key=lambda i: -abs(self.values[i]))[:n]
        return [(self.names[i], self.values[i], self.details[i]) for i in order]

    def words(self) -> Attribution:
        """Token parts merged into whole words: word pieces of one word summed, named by the word as written.

        Only the grouping changes, so the total stays the same. Entries are grouped by (side, item, word) from
        their details, which the token explainers write (see explain.gradients.token_entries).
        """
        if self.kind not in TOKEN_KINDS:
            raise ExplanationError(f"{self.kind} has no words: only {', '.join(TOKEN_KINDS)} do")
        groups: dict[tuple, dict] = {}
        for value, detail in zip(self.values, self.details):
            key = (detail.get("side"), detail.get("item_id"), detail["word_index"])
            group = groups.setdefault(key, {"value": 0.0, "positions": [], "detail": detail})
            group["value"] += value
            group["positions"].append(detail["position"])
        names, values, details = [], [], []
        for (side, _item_id, word_index), group in groups.items():
            first = group["detail"]
            names.append(f"{side}: {first['word']}" if side else first["word"])
            values.append(group["value"])
            merged = {"word": first["word"], "word_index": word_index, "positions": group["positions"]}
            merged.update({k: first[k] for k in ("side", "item_id", "title") if k in first})
            details.append(merged)
        return Attribution(self.kind, tuple(names), tuple(values), self.base_value, self.method,
                           {**self.parameters, "granularity": "word"}, self.completeness_gap, self.seconds,
                           tuple(details))

    def terms(self) -> Attribution:
        """Whole words merged into distinct terms: every occurrence of a word (case-folded) summed.

        An item text can say its brand in the title and again in its description; IG is additive, so the sum over
        the occurrences is what the word contributes wherever it appears. The total stays the same; a term is
        named as first written, and its details list every position.
        """
        words = self.words()
        groups: dict[tuple, dict] = {}
        for name, value, detail in zip(words.names, words.values, words.details):
            key = (detail.get("side"), detail.get("item_id"), detail["word"].casefold())
            group = groups.setdefault(key, {"name": name, "value": 0.0, "positions": [], "occurrences": 0,
                                            "detail": detail})
            group["value"] += value
            group["positions"].extend(detail["positions"])
            group["occurrences"] += 1
        details = [{**{k: v for k, v in g["detail"].items() if k != "word_index"}, "positions": g["positions"],
                    "occurrences": g["occurrences"]} for g in groups.values()]
        return Attribution(self.kind, tuple(g["name"] for g in groups.values()),
                           tuple(g["value"] for g in groups.values()), self.base_value, self.method,
                           {**self.parameters, "granularity": "term"}, self.completeness_gap, self.seconds,
                           tuple(details))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "in_total": self.in_total, "names": list(self.names), "values": list(self.values),
                "details": [dict(d) for d in self.details], "base_value": self.base_value, "method": self.method,
                "parameters": dict(self.parameters), "completeness_gap": self.completeness_gap,
                "seconds": self.seconds}

    @classmethod
    def from_dict(cls, data: dict) -> Attribution:
        data = _checked_keys(data, {f.name for f in fields(cls)} | {"in_total"}, "attribution")
        in_total = data.pop("in_total", None)
        try:
            part = cls(**data)
        except TypeError as exc:
            raise ExplanationError(f"attribution is incomplete: {exc}") from exc
        if in_total is not None and in_total != part.in_total:
            raise ExplanationError(f"attribution {part.kind}: in_total {in_total} contradicts its kind")
        return part


@dataclass(frozen=True)
class Explanation:
    """Why one item got its score for a user, a query or both (or why A scored above B): every part, added up."""

    item_id: str
    item_title: str
    user_id: str | None
    query: str | None
    mode: str  # how the context was made: "user", "query", "user+query", "popularity"
    moment: str  # ISO-8601 UTC: the moment scored
    checkpoint_id: str
    score: float  # the model's own score; for a pair, score(A) - score(B)
    base_value: float  # the score of the baseline input
    parts: tuple[Attribution, ...]
    flags: tuple[str, ...] = ()  # machine-readable conditions; see explain.explanations.FLAGS
    notes: tuple[str, ...] = ()  # the same for a person, and anything else worth saying
    timing: dict = field(default_factory=dict)  # seconds per stage, and "total"
    versus_item_id: str | None = None  # a pair: the item B that A is compared with
    versus_item_title: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "parts", tuple(self.parts))
        object.__setattr__(self, "flags", tuple(self.flags))
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "timing", {str(k): float(v) for k, v in self.timing.items()})
        object.__setattr__(self, "score", float(self.score))
        object.__setattr__(self, "base_value", float(self.base_value))
        kinds = [part.kind for part in self.parts]
        repeated = sorted({kind for kind in kinds if kinds.count(kind) > 1})
        if repeated:
            raise ExplanationError(f"an explanation has one part per kind; {', '.join(repeated)} repeats")
        if not (math.isfinite(self.score) and math.isfinite(self.base_value)):
            raise ExplanationError(f"score {self.score} and base value {self.base_value} must be finite")

    @property
    def is_pair(self) -> bool:
        return self.versus_item_id is not None

    @property
    def total(self) -> float:
        """The sum of the values of the in-total parts: base_value + total == score + completeness_gap."""
        return math.fsum(value for part in self.parts if part.in_total for value in part.values)

    @property
    def completeness_gap(self) -> float:
        """base_value + total - score: what the attributions claim beyond what the model does (0 is perfect)."""
        return self.base_value + self.total - self.score

    def part(self, kind: str) -> Attribution | None:
        if kind not in KINDS:
            raise ExplanationError(f"attribution kind '{kind}' is not one of {', '.join(KINDS)}")
        return next((part for part in self.parts if part.kind == kind), None)

    def features(self) -> Attribution | None:
        """The behaviour features as an analyst reads them: SHAP over every feature as the history sets them (the
        "behaviour_full" drill-down), or the in-total "behaviour" part where there is no drill-down."""
        return self.part("behaviour_full") or self.part("behaviour")

    def to_dict(self) -> dict:
        out = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        out.update(parts=[part.to_dict() for part in self.parts], flags=list(self.flags), notes=list(self.notes),
                   timing=dict(self.timing), total=self.total, completeness_gap=self.completeness_gap)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Explanation:
        if not isinstance(data, dict):
            raise ExplanationError(f"an explanation is a JSON object, not {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ExplanationError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("schema_version") == 1:
            raise ExplanationError("this explanation is schema_version 1, from an earlier WhyRec: its history part "
                                   "was Integrated Gradients over the user state, not the past items' removal "
                                   "effects, and its parts do not add up the way version 2's do; explain the "
                                   "item again to get version 2")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ExplanationError(f"schema_version {data.get('schema_version')!r}; this WhyRec reads "
                                   f"version {SCHEMA_VERSION}")
        derived = {"schema", "schema_version", "total", "completeness_gap"}
        values = _checked_keys(data, {f.name for f in fields(cls)} | derived, "explanation")
        for key in derived:
            values.pop(key, None)
        values["parts"] = tuple(Attribution.from_dict(part) for part in values.get("parts", ()))
        try:
            return cls(**values)
        except TypeError as exc:
            raise ExplanationError(f"explanation is incomplete: {exc}") from exc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Explanation:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ExplanationError(f"not valid JSON ({exc})") from exc
        return cls.from_dict(data)


def _checked_keys(data: dict, known: set[str], what: str) -> dict:
    if not isinstance(data, dict):
        raise ExplanationError(f"{what} is a JSON object, not {type(data).__name__}")
    unknown = sorted(set(data) - known)
    if unknown:
        raise ExplanationError(f"unknown {what} keys: {', '.join(unknown)}")
    return dict(data)


def _plain(value):
    """A JSON-plain copy (lists, str, int, float, bool, None), so that a JSON round trip gives it back equal."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, default=_numpy_to_python))
    except (TypeError, ValueError) as exc:
        raise ExplanationError(f"not representable in JSON: {exc}") from exc


def _numpy_to_python(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
