"""The report as a record: one user's (or one query's) top-k, each item with its explanation, where every number
came from, and its JSON form. Built and written by explain.report, drawn as a page by explain.report_page.

JSON schema (`Report.to_dict`, `schema_version` 2: its explanations are explain.base's version 2; a version-1
report is refused with a message that says why):

    {
      "schema": "whyrec-report", "schema_version": 2,
      "user_id": str | null, "query": str | null, "mode": "user" | "query" | "user+query" | "popularity",
      "notes": [str],                 # what the ranking had to assume (no history, a cut query, ...)
      "provenance": {
          "checkpoint_id": str, "model_created": str | null, "base_encoder": str | null,
          "data_fingerprint": str,        # the data served; "model_data_fingerprint": the data the model saw
          "model_data_fingerprint": str | null, "data_source": str,
          "parameters": {"k", "mode", "user_id", "query", "n_steps", "method", "internal_batch_size",
                         "baseline", "baseline_meaning", "drill_down", "exclude_seen"},
          "created": str,                 # ISO-8601 UTC, when the report was built
          "seconds": float,               # how long it took to build
          "explanations_from_cache": int, # of the items, how many explanations came from the cache (explain.cache)
          "versions": {str: str | null}   # whyrec, python, torch, transformers, captum, shap, plotly, ...
      },
      "items": [{"rank": int, "item_id": str, "title": str, "score": float,
                 "explanation": {...}}]   # rank order; each explanation in the explain.base schema
    }
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from explain.base import Explanation
from explain.errors import ExplanationError

SCHEMA = "whyrec-report"
SCHEMA_VERSION = 2


class ReportError(ExplanationError):
    """A report that cannot be built or written as asked: unknown user, bad k, unwritable path, no browser."""


@dataclass(frozen=True)
class ReportItem:
    """One ranked item and why it got its score."""

    rank: int  # 1-based, as ranked
    item_id: str
    title: str
    score: float  # the served score (Recommender.recommend); the explanation splits the same number
    explanation: Explanation

    def to_dict(self) -> dict:
        return {"rank": self.rank, "item_id": self.item_id, "title": self.title, "score": self.score,
                "explanation": self.explanation.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> ReportItem:
        try:
            return cls(int(data["rank"]), str(data["item_id"]), str(data["title"]), float(data["score"]),
                       Explanation.from_dict(data["explanation"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReportError(f"report item is incomplete or malformed ({exc})") from exc


@dataclass
class Report:
    """The top-k of one user or query, each item with its explanation, and where every number came from."""

    user_id: str | None
    query: str | None
    mode: str  # how the ranking was made: "user", "query", "user+query", "popularity"
    items: list[ReportItem]  # rank order
    provenance: dict  # see the module docstring
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "provenance": self.provenance,
                "user_id": self.user_id, "query": self.query, "mode": self.mode, "notes": list(self.notes),
                "items": [item.to_dict() for item in self.items]}

    @classmethod
    def from_dict(cls, data: dict) -> Report:
        if not isinstance(data, dict):
            raise ReportError(f"a report is a JSON object, not {type(data).__name__}")
        if data.get("schema") != SCHEMA:
            raise ReportError(f"schema is {data.get('schema')!r}, expected {SCHEMA!r}")
        if data.get("schema_version") == 1:
            raise ReportError("this report is schema_version 1, from an earlier WhyRec whose history part was "
                              "Integrated Gradients over the user state; export it again to get version 2")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ReportError(f"report schema_version {data.get('schema_version')!r}; this WhyRec reads "
                              f"version {SCHEMA_VERSION}")
        try:
            return cls(data["user_id"], data["query"], data["mode"],
                       [ReportItem.from_dict(item) for item in data["items"]], dict(data["provenance"]),
                       tuple(data.get("notes", ())))
        except (KeyError, TypeError) as exc:
            raise ReportError(f"report is incomplete ({exc})") from exc

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ReportError(f"not valid JSON ({exc})") from exc
