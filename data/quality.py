"""The data-quality report: what is wrong with a dataset, how much, where, and what to do about it — as data."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from data.errors import DataError
from data.features import FEATURES
from data.schema import Dataset
from data.split import SMALLEST_MIN_HISTORY, leave_last_out

SEVERITIES = ("blocking", "warning", "info")  # report order: what stops training first
EXAMPLE_LIMIT = 5
EARLIEST_PLAUSIBLE_EVENT = pd.Timestamp("1995-01-01", tz="UTC")  # before online shops; usually a 0 read as a date
BOT_WINDOW = pd.Timedelta(seconds=60)
PRICE_OUTLIER_FACTOR = 100  # a price this many times its category median is a unit or typing error, not a product
MIN_PRICES_FOR_MEDIAN = 5  # fewer prices make a median too shaky to call anything absurd
MIN_TEXT_CHARS = 3  # below this a title says nothing an encoder can use
# Titles that stand in for a missing name: "Item 42", "product_17", "SKU #A12", "untitled", "n/a".
ID_TITLE = r"(?:item|product|movie|film|book|sku|asin|id|no\.?)\s*[#:_\-]?\s*\w*\d\w*"
PLACEHOLDER_TITLE = r"untitled|unknown|n/?a|none|null|nan|title|no title|tbd|-+|\?+"


@dataclass(frozen=True)
class Finding:
    """One problem found in a dataset: what, how bad, how much, where, and what to do."""

    code: str  # stable machine name, e.g. "duplicate_events"
    title: str  # one line for a person
    severity: str  # "blocking" (cannot train), "warning" (fix it or know why not), "info" (worth knowing)
    count: int  # how many records it affects
    share: float  # count relative to what it counts (events, items or users), 0..1
    examples: tuple[dict, ...]  # up to EXAMPLE_LIMIT concrete records, JSON-ready values
    advice: str  # what to do about it

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise DataError(f"severity must be one of {', '.join(SEVERITIES)}", field="severity", value=self.severity)

    def to_dict(self) -> dict:
        return {
            "code": self.code,
            "title": self.title,
            "severity": self.severity,
            "count": self.count,
            "share": self.share,
            "examples": [dict(example) for example in self.examples],
            "advice": self.advice,
        }


@dataclass(frozen=True)
class QualityReport:
    """Every finding on one dataset, most severe first, beside the dataset's summary."""

    summary: dict
    findings: tuple[Finding, ...]

    def blocking(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "blocking")

    def warnings(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "warning")

    def finding(self, code: str) -> Finding | None:
        return next((f for f in self.findings if f.code == code), None)

    def to_dict(self) -> dict:
        return {"summary": self.summary, "findings": [f.to_dict() for f in self.findings]}

    def to_frame(self) -> pd.DataFrame:
        """One row per finding, examples flattened to text for a table."""
        rows = [{**f.to_dict(), "examples": _examples_text(f.examples)} for f in self.findings]
        return pd.DataFrame(rows, columns=["severity", "code", "title", "count", "share", "examples", "advice"])

    def raise_if_blocking(self) -> None:
        blocking = self.blocking()
        if blocking:
            first = blocking[0]
            more = f" (and {_n(len(blocking) - 1, 'more blocking finding')})" if len(blocking) > 1 else ""
            raise DataError(f"{first.title}{more}. {first.advice}", file=self.summary.get("source"))


def quality_report(
    dataset: Dataset,
    *,
    now: pd.Timestamp | None = None,
    bot_events_per_minute: float = 30,
    cold_threshold: int = 3,
) -> QualityReport:
    """Check a dataset for what would stop, skew or mislead training, and say what to do about each.

    now: the moment after which an event is "in the future" (default: the wall clock at call time).
    bot_events_per_minute: more events than this by one user in any 60-second window looks automated.
    cold_threshold: users and items with fewer events than this are cold.
    """
    if not bot_events_per_minute > 0:
        raise DataError("must be > 0", field="bot_events_per_minute", value=bot_events_per_minute)
    if cold_threshold < 1:
        raise DataError("must be ≥ 1", field="cold_threshold", value=cold_threshold)
    now = pd.Timestamp.now(tz="UTC") if now is None else _as_utc(pd.Timestamp(now))
    synthetic = dataset.meta.synthetic_clock
    findings = [
        _no_usable_events(dataset),
        _no_item_text(dataset),
        _no_evaluable_users(dataset),
        _duplicate_events(dataset),
        _duplicate_items(dataset),
        _set_aside_events(dataset, "unknown item", "item_id", "catalog"),
        _set_aside_events(dataset, "unknown user", "user_id", "user table"),
        _missing_text(dataset),
        _impossible_prices(dataset),
        _items_without_price(dataset),
        # A synthetic clock holds an order, not times: dates and rates measured on it mean nothing.
        None if synthetic else _future_timestamps(dataset, now),
        None if synthetic else _ancient_timestamps(dataset),
        None if synthetic else _bot_like_users(dataset, bot_events_per_minute),
        _out_of_order(dataset),
        _tied_timestamps(dataset),
        _synthetic_clock(dataset),
        *_cold(dataset, cold_threshold),
    ]
    found = [f for f in findings if f is not None]
    found.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: check order within a severity
    return QualityReport(summary=dataset.summary(), findings=tuple(found))


# ---------------------------------------------------------------------------------------------
# Blocking: a model cannot be trained or evaluated on this.


def _no_usable_events(dataset: Dataset) -> Finding | None:
    if len(dataset.events):
        return None
    set_aside = dataset.set_aside_events
    if len(set_aside) == 0:
        return Finding(
            code="no_usable_events",
            title="There are no events at all",
            severity="blocking",
            count=0,
            share=0.0,
            examples=(),
            advice="A recommender learns from user–item events; supply an events table with at least one record.",
        )
    reasons = set_aside["reason"].value_counts()
    return Finding(
        code="no_usable_events",
        title=f"No usable events: all {len(set_aside)} were set aside ({_breakdown(reasons)})",
        severity="blocking",
        count=len(set_aside),
        share=1.0,
        examples=_records(set_aside, ["user_id", "item_id", "timestamp", "event", "reason"]),
        advice="Check that the events' item_id matches the catalog's item_id in type and format (leading zeros, "
        "prefixes, numbers read as floats) and, with a user table, that every user_id is in it.",
    )


def _no_item_text(dataset: Dataset) -> Finding | None:
    items = dataset.items
    if len(items) == 0:
        return Finding(
            code="no_item_text",
            title="The catalog is empty",
            severity="blocking",
            count=0,
            share=0.0,
            examples=(),
            advice="Supply an items table with item_id and title; the text encoder has nothing to read.",
        )
    title_problem = _title_problems(items)
    if (title_problem.isna().to_numpy() | _has_description(items)).any():
        return None
    return Finding(
        code="no_item_text",
        title=f"None of the {len(items)} items has usable text (title or description)",
        severity="blocking",
        count=len(items),
        share=1.0,
        examples=_records(items.assign(problem=title_problem), ["item_id", "title", "problem"]),
        advice="The recommender reads item text; fill titles from the source's metadata "
        "(for Amazon data, pass the meta file beside the reviews).",
    )


def _no_evaluable_users(dataset: Dataset) -> Finding | None:
    events = dataset.events
    if len(events) == 0:
        return None  # already blocking as no_usable_events
    if len(leave_last_out(dataset, SMALLEST_MIN_HISTORY).test):
        return None
    distinct_items = events.groupby("user_id", sort=True)["item_id"].nunique()
    distinct_items = distinct_items.sort_values(ascending=False, kind="stable")
    examples = distinct_items.rename("distinct_items").reset_index()
    return Finding(
        code="no_evaluable_users",
        title=f"No user has enough history to hold out a validation and a test item "
        f"(at least {SMALLEST_MIN_HISTORY} distinct items, touched at different moments)",
        severity="blocking",
        count=len(distinct_items),
        share=1.0,
        examples=_records(examples, ["user_id", "distinct_items"]),
        advice="Leave-last-out needs users with a history before their last two items; load more events "
        "per user, or check that timestamps are not all the same instant.",
    )


# ---------------------------------------------------------------------------------------------
# Records set aside at load time.


def _duplicate_events(dataset: Dataset) -> Finding | None:
    repeats = dataset.set_aside_events[dataset.set_aside_events["reason"] == "duplicate"]
    if len(repeats) == 0:
        return None
    return Finding(
        code="duplicate_events",
        title=f"{_n(len(repeats), 'event')} set aside as exact repeats (same user, item, time and event type)",
        severity="warning",
        count=len(repeats),
        share=len(repeats) / _all_events(dataset),
        examples=_records(repeats, ["user_id", "item_id", "timestamp", "event"]),
        advice="The repeats were set aside and are not used. If they are real repeated actions, give them "
        "distinct timestamps; if the export doubled records, fix the export.",
    )


def _duplicate_items(dataset: Dataset) -> Finding | None:
    repeats = dataset.set_aside_items[dataset.set_aside_items["reason"] == "duplicate"]
    if len(repeats) == 0:
        return None
    kept_title = repeats["item_id"].map(dataset.items.set_index("item_id")["title"])
    conflicting = int((kept_title != repeats["title"]).sum())
    return Finding(
        code="duplicate_items",
        title=f"{_n(len(repeats), 'item row')} set aside: their item_id is already in the catalog"
        + (f" ({conflicting} with a different title)" if conflicting else ""),
        severity="warning",
        count=len(repeats),
        share=len(repeats) / (len(dataset.items) + len(repeats)),
        examples=_records(repeats.assign(kept_title=kept_title), ["item_id", "title", "kept_title", "price"]),
        advice="The first row of each item_id is kept and later rows are set aside; if the rows differ, "
        "merge them in the source so the kept text and price are the right ones.",
    )


def _set_aside_events(dataset: Dataset, reason: str, id_column: str, table: str) -> Finding | None:
    orphans = dataset.set_aside_events[dataset.set_aside_events["reason"] == reason]
    if len(orphans) == 0:
        return None
    other = "user_id" if id_column == "item_id" else "item_id"
    per_id = (
        orphans.groupby(id_column, sort=True)
        .agg(events=(other, "size"), **{f"{other.removesuffix('_id')}s": (other, "nunique")})
        .sort_values("events", ascending=False, kind="stable")
        .reset_index()
    )
    noun = "item" if id_column == "item_id" else "user"
    return Finding(
        code=f"unknown_{noun}s",
        title=f"{_n(len(orphans), 'event')} set aside: {_n(len(per_id), noun + ' id')} not in the {table}",
        severity="warning",
        count=len(orphans),
        share=len(orphans) / _all_events(dataset),
        examples=_records(per_id, list(per_id.columns)),
        advice=f"These events were set aside. Check that {id_column} is written the same way in both files "
        f"(leading zeros, prefixes, numbers read as floats), or add the missing {noun}s to the {table}.",
    )


# ---------------------------------------------------------------------------------------------
# Item text and prices.


def _title_problems(items: pd.DataFrame) -> pd.Series:
    """Why each item's title is unusable ("empty", "only an id", "placeholder", "too short"), or NA."""
    titles = items["title"].fillna("").astype(str).str.strip()
    item_ids = items["item_id"].astype(str).str.strip()
    problem = pd.Series(pd.NA, index=items.index, dtype="object")
    too_short = titles.str.len() < MIN_TEXT_CHARS
    placeholder = titles.str.fullmatch(PLACEHOLDER_TITLE, case=False)
    only_id = (
        (titles.str.casefold() == item_ids.str.casefold())
        | titles.str.fullmatch(ID_TITLE, case=False)
        | (titles.str.contains(r"\d") & ~titles.str.contains(r"[^\W\d_]"))  # digits and symbols, no letters
    )
    # Most telling reason last, so it wins.
    problem[too_short.to_numpy()] = "too short"
    problem[placeholder.to_numpy()] = "placeholder"
    problem[only_id.to_numpy()] = "only an id"
    problem[(titles == "").to_numpy()] = "empty"
    return problem


def _has_description(items: pd.DataFrame) -> np.ndarray:
    if "description" not in items:
        return np.zeros(len(items), dtype=bool)
    return (items["description"].fillna("").astype(str).str.strip().str.len() >= MIN_TEXT_CHARS).to_numpy()


def _missing_text(dataset: Dataset) -> Finding | None:
    items = dataset.items
    problem = _title_problems(items)
    bad = problem.notna().to_numpy()
    if not bad.any():
        return None
    flagged = items[bad].assign(problem=problem[bad], has_description=_has_description(items)[bad])
    kinds = flagged["problem"].value_counts()
    return Finding(
        code="missing_text",
        title=f"{_n(int(bad.sum()), 'item')} without a usable title ({_breakdown(kinds)})",
        severity="warning",
        count=int(bad.sum()),
        share=float(bad.mean()),
        examples=_records(flagged, ["item_id", "title", "problem", "has_description"]),
        advice="The text encoder reads the title first, then brand, category and description; items without a "
        "real title are hard to recommend by text and to explain. Fill titles from the source's metadata.",
    )


def _impossible_prices(dataset: Dataset) -> Finding | None:
    items = dataset.items
    if "price" not in items:
        return None
    price = pd.to_numeric(items["price"], errors="coerce").astype("float64")
    priced = price.notna()
    if not priced.any():
        return None
    finite = np.isfinite(price)
    positive = priced & finite & (price > 0)
    category = items["category"] if "category" in items else pd.Series(None, index=items.index, dtype="object")
    groups = price[positive].groupby(category[positive])
    category_median = groups.median()[groups.size() >= MIN_PRICES_FOR_MEDIAN]
    overall_median = price[positive].median() if positive.sum() >= MIN_PRICES_FOR_MEDIAN else np.nan
    # The category's median where it has enough prices to trust; the catalog's for items without a category.
    # Items of small categories go unjudged: a few dear monitors among cheap cables are not errors.
    reference = category.map(category_median).astype("float64")
    reference[category.isna().to_numpy()] = overall_median
    outlier = positive & (price > PRICE_OUTLIER_FACTOR * reference)

    problem = pd.Series(pd.NA, index=items.index, dtype="object")
    problem[(priced & (price == 0)).to_numpy()] = "zero"
    problem[(priced & ~finite).to_numpy()] = "not a finite number"
    judged_by = np.where(category.isna().to_numpy(), "catalog", "category")
    problem[outlier.to_numpy()] = [f"over {PRICE_OUTLIER_FACTOR}× the {scope} median" for scope in judged_by[outlier]]
    bad = problem.notna().to_numpy()
    if not bad.any():
        return None
    flagged = items[bad].assign(problem=problem[bad], median=reference[bad])
    # Worst first: outliers by how far out they are, then zeros.
    flagged = flagged.assign(_ratio=(flagged["price"] / flagged["median"]).fillna(0)).sort_values(
        "_ratio", ascending=False, kind="stable"
    )
    kinds = flagged["problem"].value_counts()
    return Finding(
        code="impossible_prices",
        title=f"{_n(int(bad.sum()), 'item')} with an impossible price ({_breakdown(kinds)})",
        severity="warning",
        count=int(bad.sum()),
        share=int(bad.sum()) / int(priced.sum()),
        examples=_records(flagged, ["item_id", "title", "category", "price", "median", "problem"]),
        advice="Zero usually means a missing price and huge outliers a unit mix-up (cents as units) or a typo; "
        "set them to empty in the source so price-fit features ignore them instead of learning from them.",
    )


def _items_without_price(dataset: Dataset) -> Finding | None:
    items = dataset.items
    if len(items) == 0:
        return None
    unpriced = items["price"].isna().to_numpy() if "price" in items else np.ones(len(items), dtype=bool)
    if not unpriced.any():
        return None
    everything = bool(unpriced.all())
    return Finding(
        code="items_without_price",
        title="No item has a price" if everything else f"{_n(int(unpriced.sum()), 'item')} without a price",
        severity="info",
        count=int(unpriced.sum()),
        share=float(unpriced.mean()),
        examples=() if everything else _records(items[unpriced], ["item_id", "title"]),
        advice="Price features read a neutral, typical value for items without a price"
        + (", so price plays no part in this dataset's recommendations." if everything else "."),
    )


# ---------------------------------------------------------------------------------------------
# The clock.


def _future_timestamps(dataset: Dataset, now: pd.Timestamp) -> Finding | None:
    events = dataset.events
    future = events[(events["timestamp"] > now).to_numpy()]
    if len(future) == 0:
        return None
    future = future.sort_values("timestamp", ascending=False, kind="stable")
    return Finding(
        code="future_timestamps",
        title=f"{_n(len(future), 'event')} dated after now ({now.isoformat(timespec='seconds')})",
        severity="warning",
        count=len(future),
        share=len(future) / len(events),
        examples=_records(future, ["user_id", "item_id", "timestamp", "event"]),
        advice="Future dates usually mean milliseconds read as seconds, a wrong time zone or placeholder dates; "
        "fix them in the source. They also end up as every affected user's most recent events.",
    )


def _ancient_timestamps(dataset: Dataset) -> Finding | None:
    events = dataset.events
    ancient = events[(events["timestamp"] < EARLIEST_PLAUSIBLE_EVENT).to_numpy()]
    if len(ancient) == 0:
        return None
    ancient = ancient.sort_values("timestamp", kind="stable")
    return Finding(
        code="ancient_timestamps",
        title=f"{_n(len(ancient), 'event')} dated before {EARLIEST_PLAUSIBLE_EVENT:%Y}",
        severity="warning",
        count=len(ancient),
        share=len(ancient) / len(events),
        examples=_records(ancient, ["user_id", "item_id", "timestamp", "event"]),
        advice="Dates near 1970-01-01 usually are missing times stored as 0, or seconds read as milliseconds; "
        "fix or drop them in the source.",
    )


def _out_of_order(dataset: Dataset) -> Finding | None:
    """Events that come later in the source file than a newer event of the same user.

    Only detectable when the reader kept each event's place in its file (`dataset.source_rows`).
    """
    events = dataset.events
    if "source_row" not in events and dataset.source_rows is not None:
        events = events.assign(source_row=dataset.source_rows)
    if "source_row" not in events or len(events) == 0:
        return None
    in_file_order = events.sort_values("source_row", kind="stable")
    latest_so_far = in_file_order.groupby("user_id", sort=False)["timestamp"].cummax()
    latest_before = latest_so_far.groupby(in_file_order["user_id"], sort=False).shift()
    late = (in_file_order["timestamp"] < latest_before).to_numpy()
    if not late.any():
        return None
    flagged = in_file_order[late].assign(newer_event_before=latest_before[late])
    users = flagged["user_id"].nunique()
    return Finding(
        code="out_of_order",
        title=f"{_n(int(late.sum()), 'event')} of {_n(users, 'user')} placed in the file after a newer event",
        severity="info",
        count=int(late.sum()),
        share=float(late.mean()),
        examples=_records(flagged, ["user_id", "item_id", "source_row", "timestamp", "newer_event_before"]),
        advice="Events are ordered by timestamp, not by file position. If the file order is the true order and "
        "the clock is coarse or wrong, the timestamps need fixing; otherwise nothing to do.",
    )


def _tied_timestamps(dataset: Dataset) -> Finding | None:
    events = dataset.events
    if len(events) == 0:
        return None
    items_at_instant = events.groupby(["user_id", "timestamp"], sort=False)["item_id"].transform("nunique")
    tied = (items_at_instant > 1).to_numpy()
    if not tied.any():
        return None
    instants = (
        events[tied]
        .groupby(["user_id", "timestamp"], sort=True)["item_id"]
        .agg(lambda ids: ", ".join(dict.fromkeys(map(str, ids))))
        .rename("items")
        .reset_index()
        .head(EXAMPLE_LIMIT)
    )
    return Finding(
        code="tied_timestamps",
        title=f"{_n(int(tied.sum()), 'event')} at the same instant as an event of the same user on another item",
        severity="info",
        count=int(tied.sum()),
        share=float(tied.mean()),
        examples=_records(instants, ["user_id", "timestamp", "items"]),
        advice="Same-instant events are ordered by their row in the file. The split treats them as simultaneous, "
        "so none is history for another, and users whose items all share an instant are not evaluated. "
        "A coarse clock (days) causes this; finer timestamps fix it.",
    )


def _synthetic_clock(dataset: Dataset) -> Finding | None:
    if not dataset.meta.synthetic_clock:
        return None
    return Finding(
        code="synthetic_clock",
        title="The timestamps are synthetic: the source gave an order of events but no clock",
        severity="info",
        count=len(dataset.events),
        share=1.0 if len(dataset.events) else 0.0,
        examples=(),
        advice="The order of events is sound, so the split and histories are too; but features that need a clock "
        f"({', '.join(spec.label.lower() for spec in FEATURES if spec.needs_clock)}) read 0, recency weights "
        "count events instead of days, and the future-date, pre-1995 and bot-burst checks were skipped. "
        "Supply real timestamps if the source has them.",
    )


def _bot_like_users(dataset: Dataset, events_per_minute: float) -> Finding | None:
    events = dataset.events
    if len(events) == 0:
        return None
    user_codes, users = pd.factorize(events["user_id"])
    times = events["timestamp"].dt.tz_convert(None).astype("datetime64[ns]").to_numpy().view(np.int64)
    order, in_window = _events_in_window(user_codes, times, BOT_WINDOW.value)
    per_event = pd.DataFrame({"user": user_codes[order], "in_window": in_window, "start": times[order]})
    busiest = per_event.loc[per_event.groupby("user", sort=False)["in_window"].idxmax()]
    bots = busiest[(busiest["in_window"] > events_per_minute).to_numpy()]
    if len(bots) == 0:
        return None
    bots = bots.sort_values("in_window", ascending=False, kind="stable")
    events_per_user = np.bincount(user_codes, minlength=len(users))
    examples = pd.DataFrame(
        {
            "user_id": users[bots["user"].to_numpy()],
            "peak_events_per_minute": bots["in_window"].to_numpy(),
            "peak_minute_start": pd.to_datetime(bots["start"].to_numpy(), utc=True),
            "events": events_per_user[bots["user"].to_numpy()],
        }
    )
    bot_events = int(events_per_user[bots["user"].to_numpy()].sum())
    return Finding(
        code="bot_like_users",
        title=f"{_n(len(bots), 'user')} with more than {events_per_minute:g} events in one minute "
        f"({_n(bot_events, 'event')} in all)",
        severity="warning",
        count=len(bots),
        share=len(bots) / len(users),
        examples=_records(examples, list(examples.columns)),
        advice="Crawlers, load tests and scripted accounts teach a recommender nothing about people; drop these "
        "users before training unless the bursts are known to be real (e.g. bulk imports of ratings).",
    )


def _events_in_window(user_codes: np.ndarray, times: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """For each event, how many of its user's events fall in [its time, its time + window).

    Returns the (user, time) sort order and the counts in that order. Each window end is merged into the
    sorted events: the events sorted before it, minus the events before the window's own event, are the
    ones inside. Ends sort before events at the same key, so the window is half-open.
    """
    order = np.lexsort((times, user_codes))
    users, starts = user_codes[order], times[order]
    n = len(starts)
    is_event = np.concatenate([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)])
    merged = np.lexsort((is_event, np.concatenate([starts, starts + window]), np.concatenate([users, users])))
    events_before = np.cumsum(is_event[merged]) - is_event[merged]
    position = np.empty(2 * n, dtype=np.int64)
    position[merged] = events_before
    return order, position[n:] - np.arange(n)


# ---------------------------------------------------------------------------------------------
# Sparse users and items.


def _cold(dataset: Dataset, threshold: int) -> Iterable[Finding | None]:
    events = dataset.events
    if len(events) == 0:
        return ()
    per_user = events["user_id"].value_counts().rename("events").rename_axis("user_id")
    per_user = per_user.reset_index().sort_values(["events", "user_id"], kind="stable")
    cold_users = per_user[(per_user["events"] < threshold).to_numpy()]

    per_item = events["item_id"].value_counts().reindex(dataset.items["item_id"], fill_value=0)
    items = dataset.items.assign(events=per_item.to_numpy()).sort_values(["events", "item_id"], kind="stable")
    untouched = items[(items["events"] == 0).to_numpy()]
    cold_items = items[((items["events"] > 0) & (items["events"] < threshold)).to_numpy()]

    return (
        None
        if len(cold_users) == 0
        else Finding(
            code="cold_users",
            title=f"{_n(len(cold_users), 'user')} with fewer than {threshold} events",
            severity="info",
            count=len(cold_users),
            share=len(cold_users) / len(per_user),
            examples=_records(cold_users, ["user_id", "events"]),
            advice="Too little history to personalise on: their recommendations lean on popularity and item text, "
            f"and users with fewer than {SMALLEST_MIN_HISTORY} distinct items are not evaluated.",
        ),
        None
        if len(cold_items) == 0
        else Finding(
            code="cold_items",
            title=f"{_n(len(cold_items), 'item')} with fewer than {threshold} events",
            severity="info",
            count=len(cold_items),
            share=len(cold_items) / len(items),
            examples=_records(cold_items, ["item_id", "title", "events"]),
            advice="Their behaviour signal is thin, so the text encoder carries them; expect weaker "
            "collaborative parts in their explanations.",
        ),
        None
        if len(untouched) == 0
        else Finding(
            code="items_without_events",
            title=f"{_n(len(untouched), 'item')} never interacted with",
            severity="info",
            count=len(untouched),
            share=len(untouched) / len(items),
            examples=_records(untouched, ["item_id", "title"]),
            advice="They can still be recommended from their text alone; if they are retired products, drop them "
            "from the catalog so they are not recommended.",
        ),
    )


# ---------------------------------------------------------------------------------------------
# Shared helpers.


def _all_events(dataset: Dataset) -> int:
    return len(dataset.events) + len(dataset.set_aside_events)


def _records(frame: pd.DataFrame, columns: list[str]) -> tuple[dict, ...]:
    """Up to EXAMPLE_LIMIT rows as dicts of plain JSON-ready values (the columns that exist)."""
    present = [c for c in columns if c in frame.columns]
    head = frame[present].head(EXAMPLE_LIMIT)
    rows = head.itertuples(index=False, name=None)
    return tuple({column: _plain(value) for column, value in zip(present, row, strict=True)} for row in rows)


def _plain(value):
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _breakdown(counts: pd.Series) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in counts.items())


def _examples_text(examples: tuple[dict, ...]) -> str:
    return "; ".join(", ".join(f"{k}={v}" for k, v in example.items()) for example in examples)


def _as_utc(moment: pd.Timestamp) -> pd.Timestamp:
    return moment.tz_localize("UTC") if moment.tzinfo is None else moment.tz_convert("UTC")
