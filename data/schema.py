"""The data contract: typed item and event records, the `Dataset` that holds them, and its validation."""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd

from data.errors import DataError

EVENT_TYPES = ("view", "cart", "purchase", "rating")
ITEM_COLUMNS = ("item_id", "title", "category", "brand", "description", "price")
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event", "value")
SET_ASIDE_REASONS = ("duplicate", "unknown item", "unknown user")  # why make_dataset keeps an event out
REQUIRED_ITEM_COLUMNS = ("item_id", "title")
REQUIRED_EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "event")

@dataclass(frozen=True)
class Locator:
    """Where a record sits in its source file, for error messages: a physical line or a record number.

    Record i (0-based) is at `numbers[i]` when the reader kept them (regrouped or filtered records), else at
    i + first. `locate(i)` gives the keyword arguments of a DataError; `numbers_of(n)` all n places at once.
    """

    key: str  # "line" or "row"
    first: int = 1
    numbers: np.ndarray | None = field(default=None, repr=False)

    def __call__(self, i: int) -> dict:
        return {self.key: int(self.numbers[int(i)]) if self.numbers is not None else int(i) + self.first}

    def numbers_of(self, n: int) -> np.ndarray:
        if self.numbers is not None:
            return np.asarray(self.numbers[:n], dtype=np.int64)
        return np.arange(self.first, self.first + n, dtype=np.int64)


def line_locator(first_line: int = 2) -> Locator:
    """Records of a text file with a header line: record i (0-based) lives on line i + first_line."""
    return Locator("line", first_line)


def line_numbers_locator(lines: np.ndarray) -> Locator:
    """Records that were regrouped or filtered: record i came from physical line `lines[i]`."""
    return Locator("line", numbers=np.asarray(lines))


def row_locator() -> Locator:
    return Locator("row", 1)


@dataclass(frozen=True)
class Item:
    item_id: str
    title: str
    category: str | None = None
    brand: str | None = None
    description: str | None = None
    price: float | None = None

    @property
    def text(self) -> str:
        """The product text the encoder reads: title, then brand and category, then description."""
        return item_text(self.title, self.brand, self.category, self.description)


@dataclass(frozen=True)
class Event:
    user_id: str
    item_id: str
    timestamp: pd.Timestamp
    event: str
    value: float | None = None


ITEM_TEXT_SEPARATOR = ". "  # between the fields of an item's text
ITEM_TEXT_LABELS = {"brand": "Brand: ", "category": "Category: "}  # before the fields that need naming


def item_text(title, brand=None, category=None, description=None) -> str:
    """The product text the encoder reads: "title. Brand: b. Category: c. description", empty fields left out."""
    return item_text_layout(title, brand, category, description)[0]


def item_texts(dataset: Dataset) -> list[str]:
    """Every catalog item's `item_text`, in catalog order: what the encoder embeds, in training and evaluation."""
    items = dataset.items
    return [item_text(t, b, c, d) for t, b, c, d in
            zip(items["title"], items["brand"], items["category"], items["description"])]


def item_text_layout(title, brand=None, category=None, description=None) -> tuple[str, tuple[tuple[int, int], ...]]:
    """`item_text` and the character spans of its template: the field labels and the separators between fields.

    The template is the same on every item and says nothing about it; an explainer can keep it as it is.
    """
    fields = [("", title)]
    if brand:
        fields.append((ITEM_TEXT_LABELS["brand"], brand))
    if category:
        fields.append((ITEM_TEXT_LABELS["category"], category))
    if description:
        fields.append(("", description))
    text, spans = "", []
    for label, value in fields:
        if value is None:
            continue
        part = f"{label}{value}".strip()
        if not part:
            continue
        if text:
            spans.append((len(text), len(text) + len(ITEM_TEXT_SEPARATOR)))
            text += ITEM_TEXT_SEPARATOR
        if label and part.startswith(label.strip()):
            spans.append((len(text), len(text) + min(len(label), len(part))))
        text += part
    return text, tuple(spans)


@dataclass(frozen=True)
class DatasetMeta:
    source: str  # the path it was read from, or "generated"
    format: str  # the reader that produced it: "table", "amazon", "movielens", "recbole", ...
    fingerprint: str  # content hash of items + events; a model remembers the data it saw
    synthetic_clock: bool = False  # True when the source had an order but no clock
    notes: tuple[str, ...] = ()  # what the reader had to decide (dropped fields, assumptions)


@dataclass
class Dataset:
    """Items and events of one shop, validated, with where they came from.

    items:  one row per item, columns ITEM_COLUMNS (item_id unique, str; price float or NaN).
    events: one row per event, columns EVENT_COLUMNS, sorted by (user_id, timestamp), stable.
    """

    items: pd.DataFrame
    events: pd.DataFrame
    meta: DatasetMeta
    ground_truth: Mapping | None = field(default=None, repr=False)  # planted causes, synthetic data only
    # Records kept out of `items`/`events` because they cannot be used, with a `reason` column:
    # "duplicate" (an exact repeat), "unknown item" (an event whose item is not in the catalog),
    # "unknown user" (an event whose user is not in `users`). The quality report reads them.
    set_aside_events: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*EVENT_COLUMNS, "reason"]))
    set_aside_items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[*ITEM_COLUMNS, "reason"]))
    users: pd.DataFrame | None = None  # optional user table (user_id + attributes), e.g. MovieLens u.user
    # Where each event of `events` sat in its source file (line or record number), when the reader knew:
    # the quality report uses it to find events stored out of time order.
    source_rows: np.ndarray | None = field(default=None, repr=False)

    @cached_property
    def item_ids(self) -> np.ndarray:
        return self.items["item_id"].to_numpy()

    @cached_property
    def user_ids(self) -> np.ndarray:
        """Known users in a stable order (sorted)."""
        return np.sort(self.events["user_id"].unique())

    @cached_property
    def item_position(self) -> dict[str, int]:
        return {item_id: i for i, item_id in enumerate(self.item_ids)}

    def item(self, item_id: str) -> Item:
        pos = self.item_position.get(item_id)
        if pos is None:
            raise DataError("unknown item", field="item_id", value=item_id)
        row = self.items.iloc[pos]
        return Item(
            item_id=row.item_id,
            title=row.title,
            category=_none_if_na(row.category),
            brand=_none_if_na(row.brand),
            description=_none_if_na(row.description),
            price=None if pd.isna(row.price) else float(row.price),
        )

    def user_events(self, user_id: str) -> pd.DataFrame:
        """The user's events, in `events`' order. A binary search where `events` is sorted by user (as the readers
        leave it), so a page at a million users does not scan 20 million rows for one user."""
        users = self._sorted_event_users
        if users is None:
            return self.events[self.events["user_id"] == user_id]
        return self.events.iloc[np.searchsorted(users, user_id, side="left"):
                                np.searchsorted(users, user_id, side="right")]

    @cached_property
    def _sorted_event_users(self) -> np.ndarray | None:
        """The events' user ids when they are sorted (checked once), else None."""
        users = self.events["user_id"].to_numpy()
        return users if pd.Index(users).is_monotonic_increasing else None

    def summary(self) -> dict:
        events = self.events
        span = (events["timestamp"].min(), events["timestamp"].max()) if len(events) else (None, None)
        return {
            "source": self.meta.source,
            "format": self.meta.format,
            "fingerprint": self.meta.fingerprint,
            "users": int(events["user_id"].nunique()),
            "items": len(self.items),
            "events": len(events),
            "event_types": {k: int(v) for k, v in events["event"].value_counts().items()},
            "first_event": None if span[0] is None else span[0].isoformat(),
            "last_event": None if span[1] is None else span[1].isoformat(),
            "synthetic_clock": self.meta.synthetic_clock,
            "items_with_price": int(self.items["price"].notna().sum()),
            "categories": int(self.items["category"].nunique()),
            "brands": int(self.items["brand"].nunique()),
            "notes": list(self.meta.notes),
        }


def _none_if_na(value):
    return None if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA else value


def iso_strings(timestamps) -> np.ndarray:
    """UTC timestamps as the ISO 8601 strings `pd.Timestamp.isoformat` writes ("2024-01-05T10:00:00+00:00", with
    6 or 9 fraction digits when there is a fraction), for a whole column at once. Object array."""
    ns = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)).as_unit("ns").asi8
    seconds, fraction = np.divmod(ns, 10**9)
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s").astype(object)
    # Fractions are rare (most logs keep whole seconds): formatted one by one, only where there is one.
    micro = (fraction > 0) & (fraction % 1000 == 0)
    nano = fraction % 1000 != 0
    if micro.any():
        text[micro] += np.array([f".{f // 1000:06d}" for f in fraction[micro].tolist()], dtype=object)
    if nano.any():
        text[nano] += np.array([f".{f:09d}" for f in fraction[nano].tolist()], dtype=object)
    return text + "+00:00"


def fingerprint(items: pd.DataFrame, events: pd.DataFrame) -> str:
    digest = hashlib.sha256()
    for frame in (items, events):
        digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        digest.update(",".join(frame.columns).encode())
    return digest.hexdigest()[:16]


def make_dataset(
    items: pd.DataFrame,
    events: pd.DataFrame,
    *,
    source: str,
    format: str,
    synthetic_clock: bool = False,
    notes: Sequence[str] = (),
    ground_truth: Mapping | None = None,
    users: pd.DataFrame | None = None,
) -> Dataset:
    """Wrap normalised tables: set aside what cannot be used, sort the events, stamp the fingerprint."""
    repeated_items = items["item_id"].duplicated(keep="first")
    set_aside_items = items[repeated_items].assign(reason="duplicate")
    items = items[~repeated_items].reset_index(drop=True)

    # A reason code per event rather than a string, and one copy of the kept rows, taken in sorted order:
    # twenty million events are not held three times over. The ids are hashed once each (user codes in id order):
    # repeats, unknown ids and the order are worked out on the codes.
    user_codes, user_uniques = pd.factorize(events["user_id"].to_numpy(), sort=True)
    item_codes, item_uniques = pd.factorize(events["item_id"].to_numpy())
    times = pd.DatetimeIndex(events["timestamp"]).asi8
    kinds, _ = pd.factorize(events["event"])
    pair = user_codes * (len(item_uniques) + 1) + item_codes  # one number per (user, item); -1 codes stay apart
    key = pd.DataFrame({"pair": pair, "time": times, "event": kinds.astype(np.int8)}, copy=False)
    del pair, kinds
    reason = np.zeros(len(events), dtype=np.int8)  # 0: kept, else 1 + index into SET_ASIDE_REASONS
    reason[key.duplicated(keep="first").to_numpy()] = 1
    del key
    reason[~_known(item_codes, item_uniques, items["item_id"])] = 2
    del item_codes
    if users is not None:
        reason[~_known(user_codes, user_uniques, users["user_id"])] = 3
    aside = np.flatnonzero(reason)
    named = np.array([None, *SET_ASIDE_REASONS], dtype=object)[reason[aside]]
    set_aside_events = events.iloc[aside].assign(reason=pd.Series(named, index=events.index[aside], dtype=object))
    kept = np.flatnonzero(reason == 0)
    # Sorted by (user_id, timestamp), ties in file order: user codes in id order, then the clock, stable.
    events = events.take(kept[np.lexsort((times[kept], user_codes[kept]))]).reset_index(drop=True)
    source_rows = events.pop("source_row").to_numpy() if "source_row" in events else None
    meta = DatasetMeta(
        source=source,
        format=format,
        fingerprint=fingerprint(items, events),
        synthetic_clock=synthetic_clock,
        notes=tuple(notes),
    )
    return Dataset(
        items=items,
        events=events,
        meta=meta,
        ground_truth=ground_truth,
        set_aside_events=set_aside_events.reset_index(drop=True),
        set_aside_items=set_aside_items.reset_index(drop=True),
        users=users,
        source_rows=source_rows,
    )


def _known(codes: np.ndarray, uniques, known: pd.Series) -> np.ndarray:
    """Per row, whether its id (given as factorize codes and uniques; -1 for a missing id) is among `known`."""
    return np.append(pd.Index(uniques).isin(known.to_numpy()), pd.isna(known).any())[codes]


# ---------------------------------------------------------------------------------------------
# Validation: raw frames from any reader in, typed frames out, or one DataError naming the spot.


def require_columns(frame: pd.DataFrame, required: Sequence[str], *, file: str) -> None:
    if frame.empty and len(frame.columns) == 0:
        raise DataError("file is empty", file=file)
    present = [str(c) for c in frame.columns]
    for column in required:
        if column in present:
            continue
        close = difflib.get_close_matches(column, present, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        if len(present) == 1 and any(sep in present[0] for sep in (";", "\t", "|", ",")):
            hint = f" (one column '{_short(present[0])}' was found: is the delimiter right?)"
        raise DataError(
            f"missing required column '{column}'{hint}; columns found: {', '.join(map(_short, present))}",
            file=file,
            field=column,
        )
    if frame.empty:
        raise DataError("file has a header but no records", file=file)


def normalise_items(frame: pd.DataFrame, *, file: str, locate: Locator) -> pd.DataFrame:
    require_columns(frame, REQUIRED_ITEM_COLUMNS, file=file)
    out = pd.DataFrame(index=frame.index)
    out["item_id"] = _id_column(frame["item_id"], "item_id", file=file, locate=locate)
    out["title"] = _text_column(frame["title"]).map(lambda title: "" if title is None else title)
    for column in ("category", "brand", "description"):
        missing = pd.Series([None] * len(frame), index=frame.index, dtype=object)
        out[column] = _text_column(frame[column]) if column in frame else missing
    out["price"] = (
        _number_column(frame["price"], "price", file=file, locate=locate, minimum=0.0)
        if "price" in frame
        else np.nan
    )
    return out.reset_index(drop=True)


def normalise_events(frame: pd.DataFrame, *, file: str, locate: Locator) -> pd.DataFrame:
    require_columns(frame, REQUIRED_EVENT_COLUMNS, file=file)
    out = pd.DataFrame(index=frame.index)
    out["user_id"] = _id_column(frame["user_id"], "user_id", file=file, locate=locate)
    out["item_id"] = _id_column(frame["item_id"], "item_id", file=file, locate=locate)
    out["timestamp"] = parse_timestamps(frame["timestamp"], file=file, locate=locate)
    # Normalise the few distinct spellings, then spread them over the rows by code.
    codes, spellings = pd.factorize(frame["event"], use_na_sentinel=True)
    spelled = pd.Series(spellings, dtype="string").str.strip().str.lower()
    kind_codes = spelled.map({kind: code for code, kind in enumerate(EVENT_TYPES)}).fillna(-1).to_numpy(dtype=np.int8)
    kinds = np.where(codes >= 0, kind_codes[codes], -1).astype(np.int8)
    bad = kinds < 0
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"unknown event type; expected one of {', '.join(EVENT_TYPES)}",
            file=file,
            field="event",
            value=_raw(frame["event"].iloc[i]),
            **locate(i),
        )
    out["event"] = pd.Categorical.from_codes(kinds, categories=EVENT_TYPES)
    out["value"] = (
        _number_column(frame["value"], "value", file=file, locate=locate) if "value" in frame else np.nan
    )
    # The record's place in its file, kept aside by make_dataset (not part of the contract's columns).
    out["source_row"] = locate.numbers_of(len(frame))
    return out.reset_index(drop=True)


def parse_timestamps(values: pd.Series, *, file: str, locate: Locator) -> pd.Series:
    """UTC timestamps from unix seconds, unix milliseconds or date strings (ISO 8601 and friends)."""
    missing = values.isna() | (_blank_text(values) if _is_text(values) else False)
    if missing.any():
        i = int(np.flatnonzero(missing.to_numpy())[0])
        raise DataError("timestamp is missing", file=file, field="timestamp", value=_raw(values.iloc[i]), **locate(i))
    if pd.api.types.is_datetime64_any_dtype(values):  # a real date column (Parquet): only the zone to settle
        stamps = pd.to_datetime(values)
        stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
        return stamps.astype("datetime64[ns, UTC]")
    numeric = pd.to_numeric(values, errors="coerce")
    parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    if numeric.notna().any():
        # Unix epochs: milliseconds past 1e11 (the year 5138 in seconds), seconds below.
        unit = "ms" if numeric.abs().max() > 1e11 else "s"
        parsed[numeric.notna()] = pd.to_datetime(numeric[numeric.notna()].astype("float64"), unit=unit, utc=True)
    text = values[numeric.isna()].astype(str).str.strip()
    if len(text):
        iso = pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
        if iso.isna().any():
            iso = iso.where(iso.notna(), pd.to_datetime(text[iso.isna()], utc=True, errors="coerce", format="mixed"))
        parsed[numeric.isna()] = iso
    if parsed.isna().any():
        i = int(np.flatnonzero(parsed.isna().to_numpy())[0])
        raise DataError("not a timestamp", file=file, field="timestamp", value=_raw(values.iloc[i]), **locate(i))
    return parsed.dt.tz_convert("UTC").astype("datetime64[ns, UTC]")


def _id_column(values: pd.Series, name: str, *, file: str, locate: Locator) -> pd.Series:
    # Work on the distinct raw values, then spread them over the rows: a million users' twenty million events
    # are cleaned a million times, and hold one shared string object per id rather than one per event.
    codes, raw = pd.factorize(values, use_na_sentinel=True)
    raw = pd.Series(raw, dtype=object)
    if pd.api.types.is_float_dtype(values):
        # Ids read as floats (1.0) come back as the integers they were.
        raw = raw.map(lambda v: str(int(v)) if pd.notna(v) and float(v).is_integer() else v)
    ids = raw.astype("string").str.strip()
    usable = (ids.notna() & (ids != "")).fillna(False).to_numpy(dtype=bool)
    blank = codes < 0
    blank[~blank] = ~usable[codes[~blank]]
    if blank.any():
        i = int(np.flatnonzero(blank)[0])
        raise DataError(f"{name} is empty", file=file, field=name, value=_raw(values.iloc[i]), **locate(i))
    return pd.Series(ids.to_numpy(dtype=object)[codes], index=values.index, dtype=object)


def _is_text(values: pd.Series) -> bool:
    return not (pd.api.types.is_numeric_dtype(values) or pd.api.types.is_datetime64_any_dtype(values))


def _blank_text(values: pd.Series) -> pd.Series:
    return (values.astype("string").str.strip() == "").fillna(False).astype(bool)


def _text_column(values: pd.Series) -> pd.Series:
    """Stripped text; blanks and missing values become None (never NaN), so every reader agrees."""
    text = values.astype("string").str.strip()
    keep = (text.notna() & (text != "")).fillna(False).astype(bool).to_numpy()
    return pd.Series(np.where(keep, text.astype(object), None), index=values.index, dtype=object)


def _number_column(
    values: pd.Series, name: str, *, file: str, locate: Locator, minimum: float | None = None
) -> pd.Series:
    numbers = pd.to_numeric(values, errors="coerce").astype("float64")
    given = values.notna() & ~_blank_text(values) if _is_text(values) else values.notna()
    bad = given & numbers.isna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise DataError("not a number", file=file, field=name, value=_raw(values.iloc[i]), **locate(i))
    if minimum is not None:
        low = numbers < minimum
        if low.any():
            i = int(np.flatnonzero(low.to_numpy())[0])
            raise DataError(f"must be ≥ {minimum:g}", file=file, field=name, value=_raw(values.iloc[i]), **locate(i))
    return numbers


def _raw(value):
    if isinstance(value, np.generic):
        return value.item()
    return value


def _short(text: str, limit: int = 40) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
