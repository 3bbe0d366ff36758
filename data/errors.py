"""The error family: one small hierarchy, caught once per page in the app and once in each CLI."""

from __future__ import annotations

from typing import Any


class WhyRecError(Exception):
    """Base of every error WhyRec raises on purpose; its message is one line meant for a person."""


class DataError(WhyRecError):
    """Input data breaks the data contract: names the file, the place in it, the field and the value.

    `line` is the physical line of a text file (CSV, JSON Lines, atomic files); `row` is the
    1-based record number where lines do not apply (Parquet).
    """

    def __init__(
        self,
        rule: str,
        *,
        file: str | None = None,
        line: int | None = None,
        row: int | None = None,
        field: str | None = None,
        value: Any = None,
    ) -> None:
        self.rule = rule
        self.file = file
        self.line = line
        self.row = row
        self.field = field
        self.value = value
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        if self.value is not None:
            shown = repr(self.value) if not isinstance(self.value, str) else repr(_clip(self.value))
            where.append(f"value {shown}")
        return f"{', '.join(where)}: {self.rule}" if where else self.rule


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
