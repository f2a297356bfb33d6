"""Writing a table to CSV or Parquet, chunk by chunk (nothing is held whole in memory)."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import orjson
import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]


class Format(StrEnum):
    """Output formats."""

    CSV = "csv"
    PARQUET = "parquet"


class Kind(StrEnum):
    """Column types, and how each is written to either format."""

    TEXT = "text"
    INT = "int"
    FLOAT = "float"
    DATE = "date"
    TIMESTAMP = "timestamp"
    JSON = "json"  # any value, as JSON text in both formats
    TEXT_LIST = "text_list"  # list<string> in Parquet, a JSON array in CSV


@dataclass(frozen=True, slots=True)
class Column:
    """A column of an exported table."""

    name: str
    kind: Kind


_ARROW_TYPES = {
    Kind.TEXT: pa.string(),
    Kind.INT: pa.int64(),
    Kind.FLOAT: pa.float64(),
    Kind.DATE: pa.date32(),
    Kind.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    Kind.JSON: pa.string(),
    Kind.TEXT_LIST: pa.list_(pa.string()),
}


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _csv_cell(kind: Kind, value: Any) -> str | int | float:
    """An empty cell is null."""
    if value is None:
        return ""
    if kind in (Kind.JSON, Kind.TEXT_LIST):
        return _json(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, int | float | str):
        return value
    return str(value)


class TableWriter:
    """Rows (mappings by column name) to `path` in `fmt`; use as a context manager. The file
    appears only complete: it is written beside `path` and renamed when the block succeeds."""

    def __init__(self, path: Path, fmt: Format, columns: Sequence[Column]) -> None:
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self.fmt = fmt
        self.columns = list(columns)
        self.rows = 0
        self._file: IO[str] | None = None
        self._csv: Any = None
        self._parquet: Any = None
        self._schema = pa.schema([(c.name, _ARROW_TYPES[c.kind]) for c in self.columns])

    def __enter__(self) -> TableWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fmt is Format.CSV:
            self._file = self._partial.open("w", newline="", encoding="utf-8")
            self._csv = csv.writer(self._file)
            self._csv.writerow([c.name for c in self.columns])
        else:
            self._parquet = pq.ParquetWriter(str(self._partial), self._schema, compression="zstd")
        return self

    def write(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Append a chunk of rows (one Parquet row group)."""
        if not rows:
            return
        if self._csv is not None:
            self._csv.writerows(
                [_csv_cell(c.kind, row.get(c.name)) for c in self.columns] for row in rows
            )
        else:
            arrays = [
                pa.array(
                    [
                        _json(row.get(c.name))
                        if c.kind is Kind.JSON and row.get(c.name) is not None
                        else row.get(c.name)
                        for row in rows
                    ],
                    type=_ARROW_TYPES[c.kind],
                )
                for c in self.columns
            ]
            self._parquet.write_table(pa.Table.from_arrays(arrays, schema=self._schema))
        self.rows += len(rows)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._file is not None:
            self._file.close()
        if self._parquet is not None:
            self._parquet.close()
        if exc_type is None:
            self._partial.replace(self.path)
        else:
            self._partial.unlink(missing_ok=True)
