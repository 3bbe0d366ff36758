"""The users of a shop for a picker: search by id, the most recently active, a random few; never all of them at once."""

from __future__ import annotations

import numpy as np
import pandas as pd


class UserIndex:
    """Built once per dataset; every answer is bounded by the `limit` asked for, whatever the number of users.

    Ids are matched case-insensitively: those that start with the text first, in case-folded order (a binary search
    over the folded ids, sorted once), then those that merely contain it, in id order (one vectorised scan, only when
    the prefix matches leave room).
    """

    def __init__(self, user_ids, last_active_ns) -> None:
        ids = np.asarray(user_ids).astype(str)  # fixed-width: the scans below are numpy loops, not Python ones
        order = np.argsort(ids, kind="stable")
        self._ids = ids[order]  # (U,) sorted
        self._last_active = np.asarray(last_active_ns, dtype=np.int64)[order]  # (U,) ns of each user's last event
        folded = np.strings.lower(self._ids)
        self._by_folded = np.argsort(folded, kind="stable")  # (U,) positions in folded order
        self._folded_sorted = folded[self._by_folded]
        self._folded = folded
        self._most_recent = np.lexsort((np.arange(len(ids)), -self._last_active))  # latest first, then id order

    @classmethod
    def from_events(cls, events: pd.DataFrame) -> UserIndex:
        """From contract events: every user with an event, and the moment of their latest one."""
        if events.empty:
            return cls(np.zeros(0, dtype=str), np.zeros(0, dtype=np.int64))
        codes, names = pd.factorize(events["user_id"].astype(str), sort=False)
        last = np.full(len(names), np.iinfo(np.int64).min, dtype=np.int64)
        np.maximum.at(last, codes, events["timestamp"].dt.as_unit("ns").astype("int64").to_numpy())
        return cls(np.asarray(names), last)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, user_id) -> bool:
        if not isinstance(user_id, str) or not len(self._ids):
            return False
        at = int(np.searchsorted(self._ids, user_id))
        return at < len(self._ids) and self._ids[at] == user_id

    def first(self) -> str | None:
        """The first user in id order (a page's default), or None without users."""
        return str(self._ids[0]) if len(self._ids) else None

    def search(self, text: str, limit: int) -> list[str]:
        """Up to `limit` ids containing `text` (case-insensitive): prefix matches first, then the rest."""
        wanted = str(text).strip().lower()
        if not wanted or limit < 1:
            return []
        low = np.searchsorted(self._folded_sorted, wanted, side="left")
        high = np.searchsorted(self._folded_sorted, wanted + "\U0010ffff", side="left")
        found = [str(i) for i in self._ids[self._by_folded[low:min(high, low + limit)]]]
        if len(found) < limit:
            inside = np.flatnonzero(np.strings.find(self._folded, wanted) > 0)  # > 0: not at the start
            found += [str(i) for i in self._ids[inside[: limit - len(found)]]]
        return found

    def recently_active(self, limit: int) -> list[str]:
        """The `limit` users with the latest last event, latest first."""
        return [str(i) for i in self._ids[self._most_recent[: max(limit, 0)]]]

    def random(self, limit: int, seed: int) -> list[str]:
        """`limit` users drawn without replacement (seeded), in id order."""
        if not len(self._ids) or limit < 1:
            return []
        rng = np.random.default_rng(seed)
        picks = rng.choice(len(self._ids), size=min(limit, len(self._ids)), replace=False)
        return [str(i) for i in self._ids[np.sort(picks)]]

    def last_active_ns(self, user_id: str) -> int | None:
        """The moment of the user's latest event (ns), or None for an unknown user."""
        if user_id not in self:
            return None
        return int(self._last_active[int(np.searchsorted(self._ids, user_id))])
