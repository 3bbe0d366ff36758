"""Histories as the network reads them: one unit per distinct item, in first-touch order, with event and timing."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from data.schema import EVENT_TYPES
from model.recommender import gap_bucket

# How strong a signal each event is; a unit carries its strongest event so far.
EVENT_STRENGTH = {"view": 1, "cart": 2, "rating": 3, "purchase": 4}
_CODE_BY_STRENGTH = {s: EVENT_TYPES.index(e) + 1 for e, s in EVENT_STRENGTH.items()}
NS_PER_MINUTE = 60 * 10**9
NS_PER_DAY = NS_PER_MINUTE * 60 * 24


@dataclass(frozen=True)
class UserHistory:
    """One user's distinct items in first-touch order (oldest first).

    event_codes[i] is the strongest event on item i before the next unit's first touch (for the last
    unit: before the end of the history), so a training prefix never sees what happened after it.
    """

    user_id: str
    item_index: np.ndarray  # (T,) catalog positions
    event_codes: np.ndarray  # (T,) model.recommender.event_code values
    first_touch: np.ndarray  # (T,) int64 ns since epoch
    last_touch: np.ndarray  # (T,) int64 ns: the latest event on the unit

    def __len__(self) -> int:
        return len(self.item_index)

    @property
    def end(self) -> int:
        """The moment of the latest event, ns."""
        return int(self.last_touch.max()) if len(self) else 0


def age_days(moment_ns: int, touched_ns):
    """How many days before `moment_ns` something happened at `touched_ns` (ns; a number or an array), never
    negative. Every age the app shows is measured with this one clock from the moment scored
    (`Context.moment_ns`, `Recommender.serving_moment`), so the profile, the explanation and the what-if agree."""
    days = (np.asarray(moment_ns, dtype=np.int64) - np.asarray(touched_ns, dtype=np.int64)) / NS_PER_DAY
    days = np.maximum(days, 0.0)
    return float(days) if days.ndim == 0 else days


def build_histories(events: pd.DataFrame, item_position: dict[str, int]) -> dict[str, UserHistory]:
    """Every user's history from contract events (sorted by user, timestamp); unknown items are skipped."""
    if events.empty:
        return {}
    frame = pd.DataFrame({
        "user_id": events["user_id"].to_numpy(),
        "item": events["item_id"].map(item_position).to_numpy(),
        "t": events["timestamp"].dt.as_unit("ns").astype("int64").to_numpy(),
        "strength": events["event"].astype(str).map(EVENT_STRENGTH).to_numpy(),
    }).dropna(subset=["item"])
    frame["item"] = frame["item"].astype(np.int64)
    histories = {}
    for user_id, group in frame.groupby("user_id", sort=True):
        histories[user_id] = _history_of(user_id, group["item"].to_numpy(), group["t"].to_numpy(),
                                         group["strength"].to_numpy())
    return histories


def history_from_events(user_id: str, events: pd.DataFrame, item_position: dict[str, int]) -> UserHistory:
    """One user's history (e.g. an edited what-if history)."""
    built = build_histories(events.assign(user_id=user_id), item_position)
    return built.get(user_id) or empty_history(user_id)


_STRENGTH_BY_KIND = np.array([EVENT_STRENGTH[kind] for kind in EVENT_TYPES], dtype=np.int64)


def history_from_trail(user_id: str, items: np.ndarray, times: np.ndarray, kinds: np.ndarray) -> UserHistory:
    """One user's history from event arrays: catalog positions, ns times and EVENT_TYPES indices (no data frame)."""
    if len(items) == 0:
        return empty_history(user_id)
    return _history_of(user_id, np.asarray(items, dtype=np.int64), np.asarray(times, dtype=np.int64),
                       _STRENGTH_BY_KIND[np.asarray(kinds, dtype=np.int64)])


class HistoryStore(Mapping):
    """{user id: UserHistory} for every user, each history built when first asked for and the latest kept.

    Serving a million users builds none of them up front: a page shows a few users, and one history is a handful
    of numpy calls over that user's events. `trail(user_id)` gives a known user's events in time order as
    (catalog positions, ns times, EVENT_TYPES indices), e.g. data.features.FeatureStore.user_trail.
    """

    CACHE_SIZE = 4_096  # histories kept: the users a session clicks through, never the whole shop

    def __init__(self, user_ids: np.ndarray, trail: Callable[[str], tuple[np.ndarray, np.ndarray, np.ndarray]]):
        self._user_ids = np.asarray(user_ids)  # sorted, as Dataset.user_ids gives them
        self._trail = trail
        self._cache: OrderedDict[str, UserHistory] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, user_id) -> bool:
        if not isinstance(user_id, str) or not len(self._user_ids):
            return False
        at = int(np.searchsorted(self._user_ids, user_id))
        return at < len(self._user_ids) and self._user_ids[at] == user_id

    def __getitem__(self, user_id: str) -> UserHistory:
        with self._lock:
            history = self._cache.get(user_id)
            if history is not None:
                self._cache.move_to_end(user_id)
                return history
        if user_id not in self:
            raise KeyError(user_id)
        history = history_from_trail(user_id, *self._trail(user_id))
        with self._lock:
            self._cache[user_id] = history
            while len(self._cache) > self.CACHE_SIZE:
                self._cache.popitem(last=False)
        return history

    def __iter__(self) -> Iterator[str]:
        return (str(user_id) for user_id in self._user_ids)

    def __len__(self) -> int:
        return len(self._user_ids)


def empty_history(user_id: str) -> UserHistory:
    empty = np.zeros(0, dtype=np.int64)
    return UserHistory(user_id, empty, empty, empty, empty)


def _history_of(user_id: str, items: np.ndarray, times: np.ndarray, strengths: np.ndarray) -> UserHistory:
    order = np.argsort(times, kind="stable")
    items, times, strengths = items[order], times[order], strengths[order]
    unit_items, first_pos = np.unique(items, return_index=True)
    unit_order = np.argsort(first_pos, kind="stable")
    unit_items, first_pos = unit_items[unit_order], first_pos[unit_order]
    first_touch = times[first_pos]
    next_touch = np.append(first_touch[1:], np.iinfo(np.int64).max)
    unit_of_event = np.argsort(unit_order)[np.searchsorted(np.sort(unit_items), items)]
    last = np.zeros(len(unit_items), dtype=np.int64)
    np.maximum.at(last, unit_of_event, times)
    best = _Strongest(unit_of_event, times, strengths).before(np.arange(len(unit_items)), next_touch)
    return UserHistory(user_id, unit_items.astype(np.int64), _CODE_OF_STRENGTH[best], first_touch, last)


# A unit's event code from the strength of its strongest event (0: none seen yet, read as a view).
_CODE_OF_STRENGTH = np.array([_CODE_BY_STRENGTH[max(s, 1)] for s in range(max(EVENT_STRENGTH.values()) + 1)])


class _Strongest:
    """The strongest event on a unit before a moment, for many (unit, moment) questions at once.

    An event counts for its unit only if it happened before the next unit's first touch: the code a unit carries
    therefore depends on which unit comes next, and so on which other units a history keeps.
    """

    def __init__(self, unit_of_event: np.ndarray, times: np.ndarray, strengths: np.ndarray) -> None:
        self.moments = np.unique(times)
        self.base = np.int64(len(self.moments) + 1)
        keys = unit_of_event.astype(np.int64) * self.base + np.searchsorted(self.moments, times)
        order = np.argsort(keys, kind="stable")
        self.keys, self.unit = keys[order], unit_of_event[order].astype(np.int64)
        # A running maximum that starts again at each unit: strengths are below 8, so unit * 8 + strength rises
        # at every new unit whatever came before it.
        lifted = self.unit * 8 + strengths[order].astype(np.int64)
        self.running = np.maximum.accumulate(lifted) - self.unit * 8 if len(lifted) else lifted

    def before(self, units: np.ndarray, moments_ns: np.ndarray) -> np.ndarray:
        """(K,) strength of the strongest event of each unit strictly before its moment; 0 where none."""
        units = np.asarray(units, dtype=np.int64)
        at = units * self.base + np.searchsorted(self.moments, moments_ns, side="left")
        last = np.searchsorted(self.keys, at, side="left") - 1
        found = (last >= 0) & (self.unit[np.maximum(last, 0)] == units)
        return np.where(found, self.running[np.maximum(last, 0)], 0)


class SubsetHistories:
    """One user's history with any subsets of its units (distinct items) taken away, for many subsets at once.

    What a history rebuilt from the kept items' events alone would be (history_from_trail), without rebuilding it:
    the units keep their first and last touches, the time gaps close up over the removed units, and each kept
    unit's event code is its strongest event before the next kept unit's first touch.
    """

    def __init__(self, history: UserHistory, items: np.ndarray, times: np.ndarray, kinds: np.ndarray) -> None:
        self.history = history
        unit_of = {int(item): u for u, item in enumerate(history.item_index)}
        unit_of_event = np.fromiter((unit_of[int(i)] for i in items), dtype=np.int64, count=len(items))
        self._strongest = _Strongest(unit_of_event, np.asarray(times, dtype=np.int64),
                                     _STRENGTH_BY_KIND[np.asarray(kinds, dtype=np.int64)])

    def tensors(self, kept: np.ndarray, moment_ns: int, max_history: int) -> dict:
        """(M, U) bool units kept -> the (M, T) tensors serving_tensors gives for the rebuilt histories."""
        kept = np.asarray(kept, dtype=bool)
        M, U = kept.shape
        count = kept.sum(1)
        T = max(1, min(max_history, int(count.max(initial=0))))
        order = np.cumsum(kept, 1) - 1  # (M, U) place of each kept unit among the kept ones
        start = count - np.minimum(count, T)  # the last T kept units are read
        window = kept & (order >= start[:, None])
        rows, units = np.nonzero(window)
        columns = (order - start[:, None])[rows, units]
        # The next kept unit after each kept one (U: none), whose first touch ends what counts for it.
        upto = np.where(kept, np.arange(U), U)
        following = np.minimum.accumulate(upto[:, ::-1], axis=1)[:, ::-1]
        following = np.concatenate([following[:, 1:], np.full((M, 1), U)], axis=1)[rows, units]
        first_touch = np.append(self.history.first_touch, np.iinfo(np.int64).max)
        strength = self._strongest.before(units, first_touch[following])
        out = {name: np.zeros((M, T), dtype=np.int64) for name in ("event_codes", "gap_codes", "now_codes")}
        items = np.full((M, T), -1, dtype=np.int64)
        items[rows, columns] = self.history.item_index[units]
        out["event_codes"][rows, columns] = _CODE_OF_STRENGTH[strength]
        touched = np.zeros((M, T), dtype=np.int64)
        touched[rows, columns] = self.history.first_touch[units]
        previous = np.where(columns > 0, touched[rows, np.maximum(columns - 1, 0)], touched[rows, columns])
        gaps = (touched[rows, columns] - previous) / NS_PER_MINUTE
        out["gap_codes"][rows, columns] = gap_bucket(torch.as_tensor(gaps, dtype=torch.float32)).numpy()
        now = (moment_ns - touched[rows, columns]) / NS_PER_MINUTE
        out["now_codes"][rows, columns] = gap_bucket(torch.as_tensor(now, dtype=torch.float32)).numpy()
        tensors = {name: torch.as_tensor(value) for name, value in out.items()}
        return {"items": torch.as_tensor(items), **tensors, "lengths": torch.as_tensor(np.minimum(count, T))}


def _gaps(first_touch: np.ndarray) -> np.ndarray:
    minutes = np.diff(first_touch, prepend=first_touch[:1]) / NS_PER_MINUTE
    return gap_bucket(torch.as_tensor(minutes, dtype=torch.float32)).numpy()


def serving_tensors(histories: Sequence[UserHistory], now_ns: Sequence[int], max_history: int) -> dict:
    """Right-padded (B, T) tensors for the state after each whole history, at the moment `now_ns`."""
    B = len(histories)
    T = max(1, min(max_history, max((len(h) for h in histories), default=1)))
    items = torch.full((B, T), -1, dtype=torch.long)
    codes = torch.zeros((B, T), dtype=torch.long)
    gaps = torch.zeros((B, T), dtype=torch.long)
    now = torch.zeros((B, T), dtype=torch.long)
    lengths = torch.zeros(B, dtype=torch.long)
    for b, (history, moment) in enumerate(zip(histories, now_ns)):
        n = min(len(history), T)
        if n == 0:
            continue
        first = history.first_touch[-n:]
        items[b, :n] = torch.as_tensor(history.item_index[-n:])
        codes[b, :n] = torch.as_tensor(history.event_codes[-n:])
        gaps[b, :n] = torch.as_tensor(_gaps(first))
        minutes = (moment - first) / NS_PER_MINUTE
        now[b, :n] = gap_bucket(torch.as_tensor(minutes, dtype=torch.float32))
        lengths[b] = n
    return {"items": items, "event_codes": codes, "gap_codes": gaps, "now_codes": now, "lengths": lengths}


def training_tensors(histories: Sequence[UserHistory], max_history: int, since_ns: int | None = None) -> dict:
    """Next-item training: inputs are units 0..L-2, targets units 1..L-1, every position at once.

    `now_codes` at position i is the gap to the target's first touch, the moment that prediction is made.
    since_ns: only targets first touched at or after this moment count (an update); earlier ones stay history.
    """
    B = len(histories)
    T = max(1, min(max_history, max((len(h) - 1 for h in histories), default=1)))
    items = torch.full((B, T), -1, dtype=torch.long)
    codes = torch.zeros((B, T), dtype=torch.long)
    gaps = torch.zeros((B, T), dtype=torch.long)
    now = torch.zeros((B, T), dtype=torch.long)
    targets = torch.full((B, T), -1, dtype=torch.long)
    for b, history in enumerate(histories):
        n = min(len(history) - 1, T)
        if n <= 0:
            continue
        # The last n transitions: inputs [-n-1:-1], targets [-n:].
        first = history.first_touch[-n - 1 :]
        items[b, :n] = torch.as_tensor(history.item_index[-n - 1 : -1])
        codes[b, :n] = torch.as_tensor(history.event_codes[-n - 1 : -1])
        gaps[b, :n] = torch.as_tensor(_gaps(first[:-1]))
        minutes = (first[1:] - first[:-1]) / NS_PER_MINUTE
        now[b, :n] = gap_bucket(torch.as_tensor(minutes, dtype=torch.float32))
        targets[b, :n] = torch.as_tensor(history.item_index[-n:])
        if since_ns is not None:
            targets[b, :n][torch.as_tensor(first[1:] < since_ns)] = -1
    return {"items": items, "event_codes": codes, "gap_codes": gaps, "now_codes": now, "targets": targets}
