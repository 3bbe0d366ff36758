"""Explanations computed ahead of time: each listed user's top-k explained into the cache, as the dashboard asks.

    users = read_user_ids("users.txt")                 # or demo_users(recommender, 20)
    done = precompute(recommender, ExplanationCache(directory), users, k=10)

Each item is explained with the arguments the Recommend page's panel uses by default (explain.cache keys by every
argument), so the page finds it: the user, no query, `n_steps` Integrated Gradients steps and no drill-down. The
first `checks` items of each list also get the deletion test the panel shows under the explanation (about as costly
as the explanation itself). Entries already in the cache are read, not computed again, so a second run over the same
users is quick.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from data.errors import WhyRecError
from explain.cache import ExplanationCache
from explain.errors import ExplanationError
from explain.insights import sample_users

PANEL_STEPS = 50  # the Recommend page's default IG steps (views.explanation_panel)
FIRST_USERS = 5  # the users a picker lists first (the dashboard opens on the first): always precomputed
MAX_USERS = 10_000


@dataclass(frozen=True)
class Precomputed:
    """What a precompute run did."""

    users: int
    explanations: int  # items explained or found, over every user
    checks: int  # deletion tests run or found, over every user
    computed: int  # explanations and deletion tests computed now
    from_cache: int  # of those, already in the cache (and valid)
    refused: int  # cached entries refused (corrupted, foreign) and computed again
    seconds: float


def read_user_ids(path: str | Path) -> list[str]:
    """User ids from a file, one a line (blank lines and lines starting with # skipped); ExplanationError naming
    the file when it cannot be read or holds none."""
    path = Path(path)
    if not path.exists():
        raise ExplanationError(f"--users {path}: no such file")
    if path.is_dir():
        raise ExplanationError(f"--users {path}: a directory, not a file of user ids")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise ExplanationError(f"--users {path}: not UTF-8 text (byte {exc.start}); give one user id a line") from exc
    users = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not users:
        raise ExplanationError(f"--users {path}: no user ids in it (one id a line)")
    return list(dict.fromkeys(users))


def demo_users(recommender, n_users: int) -> list[str]:
    """The users a person opens first (the picker's first FIRST_USERS, in its order), then a seeded sample of
    users with a history (explain.insights's, as the Insights page draws it), up to `n_users` in all."""
    first = [str(u) for u in recommender.user_ids[:FIRST_USERS]]
    if n_users <= len(first):
        return first[:max(n_users, 0)]
    sampled = sample_users(recommender, min(n_users, MAX_USERS, len(recommender.user_ids)))
    return list(dict.fromkeys([*first, *sampled]))[:n_users]


def check_users(recommender, user_ids: list[str], source: str = "") -> None:
    """Refuse before any work a list with users the data does not hold, naming the first few."""
    unknown = []
    for user in user_ids:
        try:
            recommender.check_user(user)
        except WhyRecError as exc:
            unknown.append(str(exc))
    if unknown:
        where = f"{source}: " if source else ""
        more = f" (and {len(unknown) - 3} more)" if len(unknown) > 3 else ""
        raise ExplanationError(f"{where}{len(unknown)} of {len(user_ids)} users are not in this data: "
                               + "; ".join(unknown[:3]) + more)


def precompute(recommender, cache: ExplanationCache, user_ids: list[str], k: int = 10, n_steps: int = PANEL_STEPS,
               drill_down: int = 0, checks: int | None = None,
               progress: Callable[[int, int, str], None] | None = None) -> Precomputed:
    """Explain every listed user's top-k into `cache`, with the deletion tests of the first `checks` (None: all k);
    `progress(done, total, label)` after each item."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ExplanationError(f"k {k!r} must be a whole number of items, 1 or more")
    checks = k if checks is None else checks
    if isinstance(checks, bool) or not isinstance(checks, int) or checks < 0:
        raise ExplanationError(f"checks {checks!r} must be a whole number of items, 0 or more")
    if not user_ids:
        raise ExplanationError("no users to precompute")
    check_users(recommender, user_ids)
    started = time.perf_counter()
    before = dict(cache.stats)
    rankings = [(user, [r.item_id for r in recommender.recommend(user_id=user, k=k)]) for user in user_ids]
    total, done, checked = sum(len(items) for _, items in rankings), 0, 0
    for user, items in rankings:
        for rank, item in enumerate(items):
            try:
                found = cache.explain(recommender, item, user_id=user, n_steps=n_steps, drill_down=drill_down)
                if rank < checks:
                    cache.checks(recommender, found)
                    checked += 1
            except WhyRecError as exc:
                raise ExplanationError(f"user '{user}', item '{item}': {exc}") from exc
            done += 1
            if progress is not None:
                progress(done, total, f"user {user}")
    counted = {name: cache.stats[name] - before.get(name, 0) for name in cache.stats}
    return Precomputed(len(user_ids), done, checked, counted["computed"], counted["memory"] + counted["disk"],
                       counted["refused"], time.perf_counter() - started)
