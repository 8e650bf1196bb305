"""CSV ingestion for ``segmentation load-csv`` and demo data.

Real-world exports arrive with a BOM, CRLF line ends, tabs or semicolons (European Excel) and
headers like ``Annual Income (k$)``. Everything downstream expects snake_case identifiers, so
headers are renamed explicitly (the ``rename`` map) or normalised, and collisions are errors.
"""

from __future__ import annotations

import csv
import re
from os import PathLike
from pathlib import Path

import pandas as pd

from segmentation_pipeline.config import validate_identifier

__all__ = ["read_csv_file", "snake_case", "whole_number_ids"]

_DELIMITERS = ",\t;"
_SNIFF_BYTES = 64 * 1024


def snake_case(header: str) -> str:
    """``Spending Score (1-100)`` -> ``spending_score_1_100``, ``CustomerID`` -> ``customer_id``."""
    text = header.strip()
    text = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", text)  # HTTPServer -> HTTP_Server
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", text)  # customerID -> customer_ID
    text = re.sub(r"[^0-9A-Za-z]+", "_", text).strip("_").lower()
    if text and text[0].isdigit():
        text = f"col_{text}"
    return text


def _sniff_delimiter(sample: str) -> str:
    """Comma, tab or semicolon; the header line decides when the sniffer cannot."""
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        header = sample.splitlines()[0] if sample else ""
        counts = {d: header.count(d) for d in _DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def read_csv_file(path: str | PathLike[str], *, rename: dict[str, str] | None = None) -> pd.DataFrame:
    """Read a delimited text file into a frame with identifier-safe column names.

    ``rename`` keys may be the raw header (``"Annual Income (k$)"``) or its snake_case form;
    a key matching no header is an error (typos must not silently drop a feature). Remaining
    headers are normalised with :func:`snake_case`.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"CSV file not found: {file}")
    try:
        with open(file, encoding="utf-8-sig", newline="") as handle:
            sample = handle.read(_SNIFF_BYTES)
        if "\x00" in sample:
            raise ValueError(f"{file}: a binary file (NUL bytes), not delimited text")
        if not sample.strip():
            raise ValueError(f"{file}: the file is empty")
        delimiter = _sniff_delimiter(sample)
        frame = pd.read_csv(file, sep=delimiter, encoding="utf-8-sig", skip_blank_lines=True)
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{file}: not UTF-8 text (byte {exc.object[exc.start:exc.start + 1]!r} at offset {exc.start}); "
            "save it as UTF-8 CSV"
        ) from None
    except pd.errors.ParserError as exc:
        raise ValueError(f"{file}: not a readable delimited file: {exc}") from None
    frame = frame.dropna(how="all")  # e.g. a trailing ";;;" line from spreadsheet exports
    if frame.empty:
        raise ValueError(f"{file}: has a header but no data rows; nothing to load")

    raw_headers = [str(h).strip() for h in frame.columns]
    mapping = dict(rename or {})
    for target in mapping.values():
        validate_identifier(target, "rename target")
    by_snake = {snake_case(h): h for h in raw_headers}
    resolved: dict[str, str] = {}
    unknown = []
    for key, target in mapping.items():
        header = key.strip() if key.strip() in raw_headers else by_snake.get(snake_case(key))
        if header is None:
            unknown.append(key)
        else:
            resolved[header] = target
    if unknown:
        raise ValueError(f"{file}: rename names column(s) {unknown} not in the header {raw_headers}")

    names = []
    for index, header in enumerate(raw_headers):
        name = resolved.get(header) or snake_case(header) or f"column_{index + 1}"
        names.append(validate_identifier(name[:64], "column"))
    collisions = sorted({n for n in names if names.count(n) > 1})
    if collisions:
        pairs = {n: [h for h, m in zip(raw_headers, names, strict=True) if m == n] for n in collisions}
        raise ValueError(f"{file}: headers collide after normalisation: {pairs}; use rename to tell them apart")
    frame.columns = names
    return frame.reset_index(drop=True)


def whole_number_ids(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Id columns read as float only because some cells are empty (``12.0``) back to integers."""
    out = frame.copy()
    for column in columns:
        values = out[column] if column in out.columns else None
        if values is not None and values.dtype.kind == "f" and (values.dropna() % 1 == 0).all():
            out[column] = values.astype("Int64")
    return out
