"""Chronological leave-last-out split per user, on distinct items, with no event from the future in any history."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import EVENT_COLUMNS, Dataset

# The smallest useful history: one item to learn from, one to validate on, one to test on.
SMALLEST_MIN_HISTORY = 3
STAGES = ("valid", "test")
TARGET_COLUMNS = ["user_id", "item_id", "timestamp"]


# eq=False: frames do not compare or hash as values; a split is equal only to itself.
@dataclass(frozen=True, eq=False)
class Split:
    """Train events plus one held-out item per evaluated user for validation and one for test.

    train: events (EVENT_COLUMNS) to learn from. For an evaluated user only those strictly before the
           validation moment; users with too little history keep all their events here.
    valid: one row per evaluated user (user_id, item_id, timestamp = first touch of the second to last
           distinct item).
    test:  one row per evaluated user (user_id, item_id, timestamp = first touch of the last distinct item).
    """

    train: pd.DataFrame
    valid: pd.DataFrame
    test: pd.DataFrame
    min_history: int
    # Events strictly before each evaluated user's test moment, plus all of the other users' events.
    history_before_test: pd.DataFrame

    def history(self, stage: str) -> pd.DataFrame:
        """The events a model may see when predicting `stage`: "valid" (= train) or "test"."""
        if stage == "valid":
            return self.train
        if stage == "test":
            return self.history_before_test
        raise DataError(f"unknown stage; choose one of {', '.join(STAGES)}", field="stage", value=stage)

    @property
    def evaluated_users(self) -> np.ndarray:
        return self.test["user_id"].to_numpy()

    def summary(self) -> dict:
        return {
            "min_history": self.min_history,
            "train_events": len(self.train),
            "evaluated_users": len(self.test),
            "test_history_events": len(self.history_before_test),
        }


def leave_last_out(dataset: Dataset, min_history: int = SMALLEST_MIN_HISTORY) -> Split:
    """Hold out each user's last distinct item for test and the one before it for validation.

    Items are ordered by first touch, so a view, a cart and a purchase of one item are one interaction,
    and an item touched again later is not a new one. Ties on a timestamp are ordered by the events'
    row order in `dataset.events` (sorted by user and time, stable), which makes the choice of held-out
    items deterministic. The cut itself is on time: events at the very instant of a held-out item's first
    touch cannot be shown to precede it, so they stay out of that stage's history. A user is evaluated
    only if at least `min_history - 2` distinct items were first touched strictly before the validation
    moment; with distinct timestamps that is the same as having `min_history` distinct items.
    """
    if isinstance(min_history, bool) or not isinstance(min_history, int | np.integer) or min_history < 3:
        raise DataError(
            f"min_history must be an integer of at least {SMALLEST_MIN_HISTORY} "
            "(one item of history, one for validation, one for test)",
            field="min_history",
            value=min_history,
        )
    events = dataset.events.loc[:, [c for c in EVENT_COLUMNS if c in dataset.events]]
    user_codes, users = pd.factorize(events["user_id"])
    targets = held_out_items(events, user_codes, len(users), min_history)
    # Row-aligned: each event's user's validation and test moments; users not evaluated keep every event.
    valid_moment = targets["valid_moment"].array.take(user_codes)
    test_moment = targets["test_moment"].array.take(user_codes)
    timestamps = events["timestamp"].array
    evaluated = targets["evaluated"].to_numpy()[user_codes]
    train = events[~evaluated | (timestamps < valid_moment)].reset_index(drop=True)
    before_test = events[~evaluated | (timestamps < test_moment)].reset_index(drop=True)

    evaluated_users = targets[targets["evaluated"].to_numpy()]
    return Split(
        train=train,
        valid=_target_frame(users, evaluated_users, "valid"),
        test=_target_frame(users, evaluated_users, "test"),
        min_history=int(min_history),
        history_before_test=before_test,
    )


def held_out_items(events: pd.DataFrame, user_codes: np.ndarray, n_users: int, min_history: int) -> pd.DataFrame:
    """Per user code: validation and test item and moment (NaN/NaT when absent) and whether it is evaluated."""
    # Events are sorted by (user, time), stable, so the first row of a (user, item) pair is its first touch
    # and the row order among first touches is the order of distinct items, ties included.
    first = ~events.duplicated(["user_id", "item_id"]).to_numpy()
    touch_users = user_codes[first]
    touch_items = events["item_id"].to_numpy()[first]
    touch_moments = events["timestamp"].array[first]
    rank_from_end = pd.Series(touch_users).groupby(touch_users, sort=False).cumcount(ascending=False).to_numpy()

    def touch_of(rank: int) -> np.ndarray:
        position = np.full(n_users, -1, dtype=np.int64)
        is_rank = rank_from_end == rank
        position[touch_users[is_rank]] = np.flatnonzero(is_rank)
        return position

    valid_touch, test_touch = touch_of(1), touch_of(0)
    valid_moment = touch_moments.take(valid_touch, allow_fill=True)
    # Only items first touched strictly before the validation moment are history the model can see.
    seen_before_valid = np.bincount(
        touch_users, weights=touch_moments < valid_moment.take(touch_users), minlength=n_users
    )
    return pd.DataFrame(
        {
            "valid_item": pd.Series(touch_items).reindex(valid_touch).to_numpy(),
            "valid_moment": valid_moment,
            "test_item": pd.Series(touch_items).reindex(test_touch).to_numpy(),
            "test_moment": touch_moments.take(test_touch, allow_fill=True),
            "evaluated": seen_before_valid >= min_history - 2,
        }
    )


def _target_frame(users: pd.Index, targets: pd.DataFrame, stage: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": users[targets.index].to_numpy(),
            "item_id": targets[f"{stage}_item"].to_numpy(),
            "timestamp": targets[f"{stage}_moment"].array,
        }
    )
