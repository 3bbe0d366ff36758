"""Raw records of public dataset files: delimited text and required fields, with errors naming file and line."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from data.errors import DataError
from data.schema import Locator, line_numbers_locator

# Stands in for a multi-character separator ("::" in MovieLens 1M) so the fast C parser can read the file;
# the ASCII unit separator never occurs in real text.
_UNIT_SEPARATOR = "\x1f"


def read_delimited(
    path: Path, *, separator: str, names: Sequence[str], skip_lines: int = 0, encoding: str = "utf-8"
) -> pd.DataFrame:
    """A headerless delimited text file as strings, one column per name; a short record's missing fields are "".

    The index is each record's physical line number (blank lines are skipped but still counted), so errors
    can name the line a person opens; `file_lines(frame)` is the locator. Quotes are ordinary characters
    (MovieLens titles hold them) and empty fields stay "" rather than NaN, so an id or title such as "NA"
    or "null" survives as written.
    """
    source: Path | io.StringIO = path
    if len(separator) > 1:
        try:
            source = io.StringIO(path.read_text(encoding=encoding).replace(separator, _UNIT_SEPARATOR))
        except UnicodeDecodeError as exc:
            raise DataError(f"not a {encoding} text file (byte {exc.start} cannot be decoded)", file=str(path)) from exc
        separator = _UNIT_SEPARATOR
    try:
        frame = pd.read_csv(
            source,
            sep=separator,
            header=None,
            names=list(names),
            skiprows=skip_lines,
            dtype=str,
            keep_default_na=False,
            quoting=csv.QUOTE_NONE,
            encoding=encoding,
            index_col=False,
            skip_blank_lines=False,
        )
    except pd.errors.EmptyDataError:
        raise DataError("file is empty", file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"not a {encoding} text file (byte {exc.start} cannot be decoded)", file=str(path)) from exc
    except pd.errors.ParserError as exc:
        # The C parser counts physical lines from the top of the file, the numbering a person sees.
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if found is None:
            raise DataError(f"not a well-formed file: {str(exc).strip().splitlines()[-1]}", file=str(path)) from exc
        expected, line, seen = (int(g) for g in found.groups())
        raise DataError(
            f"{seen} fields where {expected} were expected (is the separator {separator!r} right?)",
            file=str(path),
            line=line,
        ) from None
    frame = frame.fillna("")
    frame.index = pd.RangeIndex(skip_lines + 1, skip_lines + 1 + len(frame), name="line")
    frame = frame[frame.apply(lambda column: column.str.strip() != "").any(axis=1)]
    if frame.empty:
        raise DataError("file has no records", file=str(path))
    return frame


def require_fields(frame: pd.DataFrame, fields: Sequence[str], *, file: str, locate: Locator) -> None:
    """Every record must carry each of `fields` (present, not null, not blank); the first that does not is named."""
    for name in fields:
        if name not in frame.columns:
            raise DataError("required field is missing", file=file, field=name, **locate(0))
        values = frame[name]
        blank = values.isna() | (values.astype("string").str.strip() == "").fillna(False)
        if blank.any():
            i = int(np.flatnonzero(blank.to_numpy())[0])
            raise DataError("required field is missing", file=file, field=name, **locate(i))


def file_lines(frame: pd.DataFrame) -> Locator:
    """The locator of a frame from `read_delimited` (or built on its index): its index holds the lines."""
    return line_numbers_locator(frame.index.to_numpy())
