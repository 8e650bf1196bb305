"""A corpus of bad inputs (issue 20): every case ends in a result or a *named* error.

A named error is one of the pipeline's own exception classes, or a ValueError/FileNotFoundError
whose message names the file at fault; a driver's ``UnicodeDecodeError``, ``AttributeError`` or
``invalid literal for int()`` fails the case.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from segmentation_pipeline.cli import parse_features
from segmentation_pipeline.config import ConfigError, PipelineConfig
from segmentation_pipeline.core.cleaning import (
    MAX_DETAIL_VALUE,
    DataQualityError,
    clean_customers,
)
from segmentation_pipeline.storage.connection import check_database_url
from segmentation_pipeline.storage.csv_loader import read_csv_file
from segmentation_pipeline.storage.errors import DatabaseUrlError, SourceError

NAMED = (ConfigError, DataQualityError, SourceError, DatabaseUrlError)
HUGE = "7" * 1_000_000


def outcome(action: Callable[[], Any], *, names: str = "") -> tuple[str, Any]:
    """("result", value) or ("error", exc) for a named error; anything else fails the case."""
    try:
        return "result", action()
    except NAMED as exc:
        return "error", exc
    except (ValueError, FileNotFoundError) as exc:
        if type(exc) in (ValueError, FileNotFoundError) and names and names in str(exc):
            return "error", exc
        raise AssertionError(f"unnamed error {type(exc).__name__}: {str(exc)[:300]}") from exc


def config() -> PipelineConfig:
    return PipelineConfig.model_validate({
        "database": {"url": "sqlite://"},
        "source": {"table": "customers", "id_column": "customer_id"},
        "features": ["age", "annual_income", "spending_score"],
        "mlflow": {"tracking_uri": "sqlite://"},
        "cleaning": {"missing": "reject", "ranges": {"age": {"min": 16, "max": 110}, "annual_income": {"min": 0},
                                                     "spending_score": {"min": 1, "max": 100}},
                     "outliers": {"enabled": False}},
    })


def customers(n: int = 30) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "customer_id": np.arange(1, n + 1).astype(object),
        "age": rng.integers(18, 80, n).astype(object),
        "annual_income": rng.lognormal(10.8, 0.3, n).round(2).astype(object),
        "spending_score": rng.integers(1, 101, n).astype(object),
    })


BAD_VALUES = ["12,000", "n/a", "", " ", "NaN", "inf", "-inf", "1e309", "-5", "abc", "1e300", None, "0x10",
              "١٢", "12 000", "12.5.3", "true", "∞", "\x00", "💥", "+-3", "1_000", HUGE]
VALUE_CASES = [(column, value) for value in BAD_VALUES for column in ("age", "annual_income")]


@pytest.mark.parametrize(("column", "value"), VALUE_CASES,
                         ids=[f"{c}={v[:12]!r}" if isinstance(v, str) else f"{c}={v}" for c, v in VALUE_CASES])
def test_a_bad_value_is_segmented_or_rejected_with_a_bounded_reason(column: str, value: Any) -> None:
    raw = customers()
    raw.loc[0, column] = value
    kind, result = outcome(lambda: clean_customers(raw, config()))
    if kind == "error":
        return
    assert len(result.clean) + len(result.rejects) == len(raw)
    assert result.rejects["reason"].str.len().gt(0).all()
    assert result.rejects["detail"].str.len().max() <= MAX_DETAIL_VALUE + 200 if len(result.rejects) else True
    if value is HUGE:
        assert len(result.rejects) == 1 and f"({len(HUGE)} characters)" in result.rejects["detail"].iloc[0]


ID_CASES = {
    "duplicate": [1, 1], "missing": [None, 2], "empty": ["", 2], "case_twins": ["abc0", "ABC0"],
    "accent_twins": ["abc0", "ábc0"], "huge": [HUGE, 2], "negative": [-1, 2], "fraction": [1.5, 2],
    "spaces": [" 1", "1 "], "nul": ["a\x00b", 2], "emoji": ["💥", 2],
}


@pytest.mark.parametrize("ids", list(ID_CASES.values()), ids=list(ID_CASES))
def test_a_bad_id_ends_in_a_result_or_a_named_error(ids: list[Any]) -> None:
    raw = customers()
    raw.loc[: len(ids) - 1, "customer_id"] = pd.Series(ids, dtype=object).to_numpy()
    kind, result = outcome(lambda: clean_customers(raw, config()))
    if kind == "result":
        assert len(result.clean) + len(result.rejects) == len(raw)
        assert result.rejects["detail"].str.len().max() <= MAX_DETAIL_VALUE + 200 if len(result.rejects) else True


FILES: dict[str, bytes] = {
    "empty": b"", "header_only": b"customer_id,age\n", "binary": bytes(range(256)) * 4, "nul": b"a,b\n1,\x00\n",
    "latin1": "customer_id,name\n1,Jos\xe9\n".encode("latin-1"), "only_delimiters": b";;;\n;;;\n",
    "ragged": b"customer_id,age\n1,2,3,4\n", "duplicate_headers": b"age,age\n1,2\n",
    "colliding_headers": b"Age,age \n1,2\n", "unterminated_quote": b'customer_id,age\n1,"30\n',
    "bom_only": "\ufeff".encode(), "utf16": "customer_id,age\n1,30\n".encode("utf-16"),
    "blank_lines": b"\n\n\n", "one_column": b"customer_id\n1\n2\n",
}


@pytest.mark.parametrize("name", list(FILES))
def test_a_bad_file_ends_in_a_frame_or_an_error_naming_the_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.csv"
    path.write_bytes(FILES[name])
    kind, result = outcome(lambda: read_csv_file(path), names=path.name)
    if kind == "result":
        assert len(result) > 0 and list(result.columns)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    kind, _ = outcome(lambda: read_csv_file(tmp_path / "absent.csv"), names="absent.csv")
    assert kind == "error"


URLS = {
    "port_letters": ("mysql+pymysql://u:secret@h:33x06/crm", "port"),
    "port_range": ("mysql+pymysql://u:secret@h:99999/crm", "port"),
    "charset": ("mysql+pymysql://u:secret@h/crm?charset=nope", "charset"),
    "postgres": ("postgresql://u:secret@h/db", "scheme"),
    "not_a_url": ("crm-database", "not a URL"),
    "oracle": ("oracle://u:secret@h/db", "scheme"),
}


@pytest.mark.parametrize("name", list(URLS))
def test_a_bad_database_url_names_the_part_at_fault(name: str) -> None:
    url, part = URLS[name]
    with pytest.raises(DatabaseUrlError, match=part) as caught:
        check_database_url(url)
    assert "secret" not in str(caught.value)


FEATURE_LISTS = {",": False, "": False, "age,,income": False, "age,age": False, "age;drop": False,
                 "age, annual_income": True, "age": True}


@pytest.mark.parametrize("text", list(FEATURE_LISTS))
def test_a_features_list_is_parsed_or_refused_by_name(text: str) -> None:
    kind, result = outcome(lambda: parse_features(text))
    assert (kind == "result") == FEATURE_LISTS[text]
    if kind == "result":
        assert all(result)
