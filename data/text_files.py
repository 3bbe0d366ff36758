"""Text files as records: opening (gzip or not) and JSON Lines, with errors that name the file and the line.

Below both the table readers (data.io) and the public-format adapters (data.adapters), which read the same files.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from data.errors import DataError


def open_text(path: Path):
    """Open a text file, transparently gunzipping `.gz`."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="strict")
    return open(path, encoding="utf-8", errors="strict")


def read_json_lines(path: Path, parse: Callable[[str], object] = json.loads) -> pd.DataFrame:
    """JSON Lines into a frame; a broken line raises a DataError naming it. `parse` reads one line."""
    records, numbers = [], []
    try:
        with open_text(path) as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                try:
                    record = parse(line)
                except (ValueError, SyntaxError) as exc:
                    raise DataError(f"broken JSON line ({exc.__class__.__name__})", file=str(path), line=number,
                                    value=line.strip()) from None
                if not isinstance(record, dict):
                    raise DataError("a JSON line must hold an object", file=str(path), line=number, value=line.strip())
                records.append(record)
                numbers.append(number)
    except UnicodeDecodeError as exc:
        raise DataError(f"not a UTF-8 text file (byte {exc.start} cannot be decoded)", file=str(path)) from exc
    except (gzip.BadGzipFile, EOFError) as exc:
        raise DataError(f"not a readable gzip file ({exc})", file=str(path)) from exc
    if not records:
        raise DataError("file is empty", file=str(path))
    # The index holds each record's physical line, so errors found later still name the right line.
    return pd.DataFrame.from_records(records, index=pd.Index(numbers, name="line"))
