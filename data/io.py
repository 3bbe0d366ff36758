"""Readers: the WhyRec table layout (CSV, Parquet, JSON Lines) and the dispatch to public-format adapters."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from data.adapters import amazon, movielens, recbole
from data.errors import DataError
from data.schema import (
    Dataset,
    Locator,
    iso_strings,
    line_locator,
    line_numbers_locator,
    make_dataset,
    normalise_events,
    normalise_items,
    row_locator,
)
from data.text_files import read_json_lines

REPEATED_COLUMNS = ("user_id", "item_id", "event")  # columns whose values repeat row after row
TABLE_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def read_table(path: Path) -> tuple[pd.DataFrame, Locator]:
    """One table file as raw strings/values, with a locator that maps record numbers back to the file."""
    kind = TABLE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"unsupported table type '{path.suffix}'; use .csv, .parquet or .jsonl", file=str(path))
    if kind == "parquet":
        return _read_parquet(path), row_locator()
    if kind == "jsonl":
        frame = read_json_lines(path)
        return frame.reset_index(drop=True), line_numbers_locator(frame.index.to_numpy())
    return _read_csv(path), line_locator(first_line=2)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, skipinitialspace=True, encoding="utf-8")
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text CSV file (byte {exc.start} cannot be decoded)", file=str(path)) from exc
    except pd.errors.ParserError as exc:
        raise DataError(f"not a well-formed CSV file: {str(exc).strip().splitlines()[-1]}", file=str(path)) from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        # Ids and event names repeat across millions of rows: read as dictionaries (pandas categoricals), they take
        # a 4-byte code per row, and validation cleans each distinct value once.
        repeated = [name for name in pq.read_schema(path).names if name in REPEATED_COLUMNS]
        frame = pq.read_table(path, read_dictionary=repeated).to_pandas()
        pyarrow.default_memory_pool().release_unused()  # the Arrow copy is gone; give its pages back
        return frame
    except (pyarrow.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({str(exc).splitlines()[0]})", file=str(path)) from exc


def find_table(directory: Path, stem: str, prefer: str | None = None) -> Path:
    """`items.csv`, `items.parquet` or `items.jsonl` in a directory (one of them, `prefer` first)."""
    found = [directory / f"{stem}{suffix}" for suffix in TABLE_SUFFIXES if (directory / f"{stem}{suffix}").exists()]
    if prefer:
        found.sort(key=lambda p: TABLE_SUFFIXES[p.suffix] != prefer)
    if not found:
        raise DataError(f"no {stem}.csv, {stem}.parquet or {stem}.jsonl here", file=str(directory))
    return found[0]


def load_tables(path: Path, prefer: str | None = None) -> Dataset:
    """The WhyRec layout: a directory with `items.*` and `events.*` (CSV, Parquet or JSON Lines)."""
    items_path = find_table(path, "items", prefer)
    events_path = find_table(path, "events", prefer)
    raw_items, locate_items = read_table(items_path)
    items = normalise_items(raw_items, file=str(items_path), locate=locate_items)
    del raw_items
    raw_events, locate_events = read_table(events_path)
    events = normalise_events(raw_events, file=str(events_path), locate=locate_events)
    del raw_events  # the raw table and the validated one are never both held through make_dataset
    ground_truth = GroundTruth(path) if (path / "ground_truth.json").exists() else None
    return make_dataset(items, events, source=str(path), format="table", ground_truth=ground_truth)


class GroundTruth(Mapping):
    """A generated shop's planted truth (ground_truth.json and event_causes.*), read on first use: a million
    users' tastes and twenty million causes stay on disk for whoever only wants the items and events."""

    def __init__(self, directory: Path):
        self.directory = directory
        self._truth: dict | None = None

    def _loaded(self) -> dict:
        if self._truth is None:
            truth = json.loads((self.directory / "ground_truth.json").read_text())
            causes = [self.directory / f"event_causes{s}" for s in TABLE_SUFFIXES]
            found = next((path for path in causes if path.exists()), None)
            if found is not None:
                truth["event_causes"] = _read_event_causes(found)
            self._truth = truth
        return self._truth

    def __getitem__(self, key: str):
        return self._loaded()[key]

    def __iter__(self):
        return iter(self._loaded())

    def __len__(self) -> int:
        return len(self._loaded())


def write_tables(dataset: Dataset, directory: Path, kind: str = "csv") -> None:
    """Write a dataset in the WhyRec layout (the inverse of `load_tables`).

    Parquet keeps timestamps as UTC timestamps; CSV and JSON Lines write them as ISO 8601 strings. A generated
    dataset's ground truth goes to ground_truth.json, its per-event causes (one row per event) to
    event_causes.<kind> beside the events.
    """
    if kind not in ("csv", "parquet", "jsonl"):
        raise DataError(f"unknown table kind '{kind}'; use csv, parquet or jsonl")
    directory.mkdir(parents=True, exist_ok=True)
    # What was set aside goes back in, so the files hold what the source held (duplicates included):
    # reading them again sets the same records aside and gives the same fingerprint.
    tables = [
        ("items", [dataset.items, dataset.set_aside_items[list(dataset.items.columns)]]),
        ("events", [dataset.events, dataset.set_aside_events[list(dataset.events.columns)]]),
    ]
    truth = dataset.ground_truth
    if truth is not None and isinstance(truth.get("event_causes"), pd.DataFrame):
        tables.append(("event_causes", [truth["event_causes"]]))
        truth = {key: value for key, value in truth.items() if key != "event_causes"}
    for stem, parts in tables:
        _write_table(parts, directory / f"{stem}.{kind}", kind)
    if truth is not None:
        _write_truth(truth, directory / "ground_truth.json")


def _write_truth(truth: Mapping, target: Path) -> None:
    """ground_truth.json with one line per entry and one per user: readable, written as it goes, and through
    json's C encoder (indenting goes through its pure-Python one: minutes for a million users)."""
    with target.open("w", encoding="utf-8") as out:
        out.write("{")
        for n, (key, value) in enumerate(truth.items()):
            out.write(",\n" if n else "\n")
            if key == "users" and isinstance(value, Mapping):
                out.write(' "users": {')
                for m, (user, taste) in enumerate(value.items()):
                    out.write(f"{',' if m else ''}\n  {json.dumps(user)}: {json.dumps(taste)}")
                out.write("\n }")
            else:
                out.write(f" {json.dumps(key)}: {json.dumps(value)}")
        out.write("\n}\n")


WRITE_CHUNK_ROWS = 1_000_000  # rows converted at a time: twenty million events are written without a second copy


def _write_table(parts: list[pd.DataFrame], target: Path, kind: str) -> None:
    """The rows of `parts`, one after the other, written a chunk at a time (one Parquet row group per chunk)."""
    chunks = [part.iloc[start:start + WRITE_CHUNK_ROWS] for part in parts
              for start in range(0, len(part), WRITE_CHUNK_ROWS)] or [parts[0]]
    if kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        schema = _arrow_schema(parts[0])
        with pq.ParquetWriter(target, schema) as writer:
            for chunk in chunks:
                # Categoricals go over as Arrow dictionaries and become strings in Arrow's own cast, not as a
                # Python string object per row.
                writer.write_table(pa.Table.from_pandas(chunk, preserve_index=False).cast(schema))
        return
    with target.open("w", encoding="utf-8", newline="") as out:
        for n, chunk in enumerate(chunks):
            if kind == "csv":
                _as_text(chunk).to_csv(out, index=False, header=n == 0)
            else:
                _as_text(chunk).to_json(out, orient="records", lines=True, force_ascii=False)


def _as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Categories (event types, causes, ids) as their names; timestamps as ISO 8601 strings."""
    changed = {name: _category_names(frame[name]) for name, dtype in frame.dtypes.items()
               if isinstance(dtype, pd.CategoricalDtype)}
    if "timestamp" in frame:
        changed["timestamp"] = iso_strings(frame["timestamp"])
    return frame.assign(**changed) if changed else frame


def _category_names(values: pd.Series) -> pd.Series:
    """A categorical column as plain string objects, one shared object per category (None where missing)."""
    names = np.append(values.cat.categories.to_numpy(dtype=object), None)
    return pd.Series(names[values.cat.codes.to_numpy()], index=values.index, dtype=object)  # code -1 -> None


def _arrow_schema(frame: pd.DataFrame):
    """Text columns as strings whatever a chunk holds (a chunk of only None would otherwise read as null)."""
    import pyarrow as pa

    fields = []
    for name, dtype in frame.dtypes.items():
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype):
            fields.append(pa.field(name, pa.string()))
        else:
            fields.append(pa.field(name, pa.Array.from_pandas(frame[name].iloc[:0]).type))
    return pa.schema(fields)


def _read_event_causes(path: Path) -> pd.DataFrame:
    """event_causes.* as `generate` holds it: timestamps as UTC, no token as None."""
    frame, _ = read_table(path)
    tokens = frame["token"].to_numpy(dtype=object)
    return frame.assign(
        timestamp=pd.to_datetime(frame["timestamp"], utc=True, format="ISO8601").astype("datetime64[ns, UTC]"),
        token=np.where(pd.isna(tokens), None, tokens),
    )


# ---------------------------------------------------------------------------------------------
# Formats and their detection. Adapters live in data/adapters/; each has detect(path) and load(path).

ADAPTERS = {"amazon": amazon, "movielens": movielens, "recbole": recbole}
FORMATS = ("auto", "table", "csv", "parquet", "jsonl", "amazon", "movielens", "recbole")


def detect_format(path: Path) -> str:
    if path.is_dir() and any((path / f"items{s}").exists() for s in TABLE_SUFFIXES):
        return "table"
    for name, adapter in ADAPTERS.items():
        if adapter.detect(path):
            return name
    raise DataError(
        "cannot tell the format: expected items.* + events.* (csv/parquet/jsonl), Amazon review JSON, "
        "MovieLens u.data/ratings.dat, or RecBole atomic files; pass --format",
        file=str(path),
    )


def load_dataset(path: str | Path, format: str = "auto") -> Dataset:
    """Read a dataset in any supported format into the validated `Dataset` of the data contract."""
    path = Path(path)
    if format not in FORMATS:
        raise DataError(f"unknown format '{format}'; choose one of {', '.join(FORMATS)}", field="format", value=format)
    if not path.exists():
        raise DataError("no such file or directory", file=str(path))
    if format == "auto":
        format = detect_format(path)
    if format in ("table", "csv", "parquet", "jsonl"):
        if not path.is_dir():
            raise DataError("the table layout is a directory holding items.* and events.*", file=str(path))
        return load_tables(path, prefer=None if format == "table" else format)
    return ADAPTERS[format].load(path)
