"""The Insights page's samples computed ahead of time, so that its first visit is instant.

    python -m explain insights --model DIR [--data DIR]      # writes DIR/insights.json (`make demo` does)

The file holds the behaviour importance and the driving words of one set of sample settings (the page's
defaults unless told otherwise), with the checkpoint and the data they were computed on. The page uses a
result only where its settings, the checkpoint and the data all match, and computes anything else itself. A file
that cannot be read, or that belongs to another checkpoint or other data, raises ExplanationError when read: the
page says so and computes instead.

    {"schema": "whyrec-insights", "schema_version": 1, "checkpoint_id": str, "data_fingerprint": str,
     "settings": {"users": int, "k": int, "pairs": int, "steps": int, "seed": int}, "seconds": float,
     "importance": BehaviourImportance.to_dict(), "words": DrivingWords.to_dict()}
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from explain.errors import ExplanationError
from explain.insights import (
    DEFAULT_K,
    DEFAULT_PAIRS,
    DEFAULT_STEPS,
    DEFAULT_USERS,
    SAMPLE_SEED,
    BehaviourImportance,
    DrivingWords,
    Progress,
    behaviour_importance,
    driving_words,
)

INSIGHTS_FILE = "insights.json"  # in the checkpoint directory, beside evaluation.json
SCHEMA = "whyrec-insights"
SCHEMA_VERSION = 1
PRECOMPUTE_COMMAND = "python -m explain insights --model {model}"


@dataclass(frozen=True)
class PrecomputedInsights:
    """Both global views for one set of sample settings, and what they were computed on."""

    checkpoint_id: str
    data_fingerprint: str
    settings: dict  # users, k, pairs, steps, seed: the page's sample settings and the sampling seed
    importance: BehaviourImportance
    words: DrivingWords
    seconds: float = 0.0

    def importance_for(self, n_users: int, k: int, seed: int = SAMPLE_SEED) -> BehaviourImportance | None:
        """The behaviour importance when it was computed with these settings, else None."""
        wanted = {"users": n_users, "k": k, "seed": seed}
        return self.importance if all(self.settings.get(key) == value for key, value in wanted.items()) else None

    def words_for(self, n_pairs: int, n_steps: int, seed: int = SAMPLE_SEED) -> DrivingWords | None:
        """The driving words when they were computed with these settings, else None."""
        wanted = {"pairs": n_pairs, "steps": n_steps, "seed": seed}
        return self.words if all(self.settings.get(key) == value for key, value in wanted.items()) else None

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "checkpoint_id": self.checkpoint_id,
                "data_fingerprint": self.data_fingerprint, "settings": self.settings, "seconds": self.seconds,
                "importance": self.importance.to_dict(), "words": self.words.to_dict()}

    @classmethod
    def from_dict(cls, data) -> PrecomputedInsights:
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise ExplanationError(f"not a precomputed insights file (schema {SCHEMA!r} expected)")
        if data.get("schema_version") != SCHEMA_VERSION:
            raise ExplanationError(f"schema_version {data.get('schema_version')!r}; this WhyRec reads version "
                                   f"{SCHEMA_VERSION}")
        try:
            settings = {key: int(data["settings"][key]) for key in ("users", "k", "pairs", "steps", "seed")}
            return cls(str(data["checkpoint_id"]), str(data["data_fingerprint"]), settings,
                       BehaviourImportance.from_dict(data["importance"]), DrivingWords.from_dict(data["words"]),
                       float(data.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ExplanationError(f"incomplete or malformed ({exc!r})") from exc


def precompute(recommender, n_users: int = DEFAULT_USERS, k: int = DEFAULT_K, n_pairs: int = DEFAULT_PAIRS,
               n_steps: int = DEFAULT_STEPS, *, seed: int = SAMPLE_SEED, importance_progress: Progress | None = None,
               words_progress: Progress | None = None) -> PrecomputedInsights:
    """Compute both views as the page would, for these settings."""
    started = time.perf_counter()
    importance = behaviour_importance(recommender, n_users, k, seed, progress=importance_progress)
    words = driving_words(recommender, n_pairs, seed, n_steps, progress=words_progress)
    settings = {"users": n_users, "k": k, "pairs": n_pairs, "steps": n_steps, "seed": seed}
    return PrecomputedInsights(recommender.checkpoint_id, recommender.dataset.meta.fingerprint, settings, importance,
                               words, round(time.perf_counter() - started, 3))


def write_insights(insights: PrecomputedInsights, path: str | Path) -> Path:
    """Write the file atomically: a reader never sees half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(insights.to_dict(), allow_nan=False)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False,
                                     encoding="utf-8") as handle:
        temporary = Path(handle.name)
        try:
            handle.write(text)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
    os.replace(temporary, path)
    return path


def read_insights(path: str | Path, checkpoint_id: str, data_fingerprint: str) -> PrecomputedInsights | None:
    """The precomputed insights at `path` for this checkpoint and data, or None when there is no file.

    A file that is unreadable, malformed, or computed for another checkpoint or other data raises
    ExplanationError naming the file, what is wrong and how to compute it again.
    """
    path = Path(path)
    if not path.exists():
        return None
    redo = f"run `{PRECOMPUTE_COMMAND.format(model=path.parent)}` again"
    try:
        insights = PrecomputedInsights.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ExplanationError) as exc:
        raise ExplanationError(f"{path}: {exc}; {redo}") from exc
    if insights.checkpoint_id != checkpoint_id:
        raise ExplanationError(f"{path}: computed for checkpoint {insights.checkpoint_id}, but the model is "
                               f"{checkpoint_id}; {redo}")
    if insights.data_fingerprint != data_fingerprint:
        raise ExplanationError(f"{path}: computed on other data (fingerprint {insights.data_fingerprint}, the data "
                               f"served is {data_fingerprint}); {redo} with --data")
    return insights
