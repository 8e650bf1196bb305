"""A corpus of bad input, each case through the whole pipeline against MariaDB.

Every case ends one of two ways: segmented with exact accounting (``n_input = n_segmented +
n_rejected``, every input row in exactly one place, every reject with a reason), or a clear
error naming the table, column or value, with nothing written back: the output tables hold
sentinel rows (a previous run) that must survive unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline import cli
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline_tests.reliability.conftest import fast_config, table_rows

pytestmark = [pytest.mark.mysql, pytest.mark.e2e]

RNG = np.random.default_rng(20)
CENTRES = [(25, 30_000, 80), (45, 60_000, 50), (60, 150_000, 20), (35, 120_000, 85)]


def _customers(n: int) -> pd.DataFrame:
    """Four well separated groups, so that k=4 is always possible."""
    group = np.arange(n) % len(CENTRES)
    centre = np.array(CENTRES, dtype=float)[group]
    return pd.DataFrame(
        {
            "customer_id": np.arange(1, n + 1),
            "age": np.clip(centre[:, 0] + RNG.normal(0, 3, n), 18, 90).round(),
            "annual_income": (centre[:, 1] * RNG.lognormal(0, 0.1, n)).round(2),
            "spending_score": np.clip(centre[:, 2] + RNG.normal(0, 4, n), 1, 100).round(),
        }
    )


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory) -> str:
    """One local tracking store for the module (the MLflow server is not what is tested here)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture()
def engine(mysql_database_url):
    engine = create_db_engine(mysql_database_url)
    yield engine
    engine.dispose()


SENTINELS = {
    "seg": pd.DataFrame({"customer_id": [1], "segment_id": [9], "segment_name": ["previous"]}),
    "rej": pd.DataFrame({"customer_id": ["2"], "reason": ["previous"]}),
    "hist": pd.DataFrame({"dagster_run_id": ["previous"], "customer_id": [1]}),
}


def _with_sentinels(engine: sa.Engine, suffix: str) -> None:
    for prefix, rows in SENTINELS.items():
        rows.to_sql(f"{prefix}_{suffix}", engine, index=False)


def _sentinels_intact(engine: sa.Engine, suffix: str) -> bool:
    return all(
        table_rows(engine, f"{prefix}_{suffix}").to_dict("records") == rows.to_dict("records")
        for prefix, rows in SENTINELS.items()
    ) and not any("__" in t for t in sa.inspect(engine).get_table_names() if suffix in t)


def _load(engine: sa.Engine, table: str, frame: pd.DataFrame, varchar: tuple[str, ...] = ()) -> None:
    """Create the source table with plain pandas (independent of the code under test)."""
    dtype = {c: sa.String(64) for c in varchar}
    frame.to_sql(table, engine, index=False, dtype=dtype)


def _run(config, capsys) -> tuple[int, dict | None, str]:
    code = cli.main(["run", "--config", str(config), "--json"])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    summary = json.loads(captured.out.strip().splitlines()[-1]) if code == 0 else None
    return code, summary, errors[0] if errors else captured.err[-2000:]


def _assert_accounted(engine: sa.Engine, suffix: str, summary: dict, source_ids: list[str]) -> pd.DataFrame:
    segments = table_rows(engine, f"seg_{suffix}")
    rejects = table_rows(engine, f"rej_{suffix}")
    assert summary["n_input"] == len(source_ids) == summary["n_segmented"] + summary["n_rejected"]
    assert (len(segments), len(rejects)) == (summary["n_segmented"], summary["n_rejected"])
    assert segments["customer_id"].astype(str).is_unique
    assert rejects["reason"].str.len().gt(0).all() and rejects["detail"].str.len().gt(0).all()
    # every input row is in exactly one place: a multiset comparison of ids
    written = sorted([*segments["customer_id"].astype(str), *rejects["customer_id"].astype(str)])
    assert written == sorted(source_ids)
    return rejects


# --------------------------------------------------------------------------- clear errors


def _identical(n: int) -> pd.DataFrame:
    return pd.DataFrame({"customer_id": range(1, n + 1), "age": 30.0, "annual_income": 50_000.0,
                         "spending_score": 50.0})


ERROR_CASES = {
    # name: (source frame or None, VARCHAR columns, config changes, expected text in the error)
    "empty-table": (_customers(0), (), {}, "table 'customers_{s}' has 0 rows"),
    "one-row": (_customers(1), (), {}, "need at least 2 rows"),
    "all-rows-identical": (_identical(60), (), {},
                           "k=4 is larger than the 1 distinct customers after cleaning; allowed: 1 <= k <= 1"),
    "fewer-distinct-than-k": (pd.concat([_identical(30), _customers(2).assign(customer_id=[31, 32])]), (), {},
                              "k=4 is larger than the 3 distinct customers after cleaning; allowed: 1 <= k <= 3"),
    "every-row-rejected": (_customers(50).assign(age=250.0), (), {},
                           "all 50 rows of 'customers_{s}' were rejected: {'out_of_range:age': 50}"),
    "text-in-a-numeric-column": (_customers(50).assign(age="abc"), ("age",), {},
                                 "table 'customers_{s}': column 'age' is not numeric: e.g. 'abc'"),
    "huge-value-without-a-range": (
        _customers(200).assign(spending_score=lambda f: f["spending_score"].where(f["customer_id"] > 3, 1e300)),
        (), {"cleaning.ranges": {"age": {"min": 16, "max": 110}}},
        "column 'spending_score' has values too large to scale (e.g. 1e+300)"),
    "missing-table": (None, (), {"source.table": "no_such_table_{s}"}, "table 'no_such_table_{s}' not found"),
    "missing-column": (_customers(50), (), {"features": ["age", "annual_income", "lifetime_value"],
                                            "cleaning.ranges": {}, "transform.log1p": []},
                       "column 'lifetime_value' not found in table 'customers_{s}'"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_unusable_input_fails_clearly_and_writes_nothing(tmp_path, mysql_database_url, engine, mlflow_store,
                                                         suffix, capsys, case):
    frame, varchar, changes, expected = ERROR_CASES[case]
    changes = {k: (v.replace("{s}", suffix) if isinstance(v, str) else v) for k, v in changes.items()}
    if frame is not None:
        _load(engine, f"customers_{suffix}", frame, varchar)
    _with_sentinels(engine, suffix)
    config = fast_config(tmp_path, mysql_database_url, mlflow_store, suffix,
                         **{"source.updated_at_column": None, **changes})
    code, _, error = _run(config, capsys)
    assert code == 1
    assert expected.replace("{s}", suffix) in error, error
    assert _sentinels_intact(engine, suffix)


# --------------------------------------------------------------------------- segmented with accounting


def test_dirty_varchar_corpus_with_unicode_ids_is_segmented_with_exact_accounting(
    tmp_path, mysql_database_url, engine, mlflow_store, suffix, capsys
):
    frame = _customers(200).astype({"annual_income": object, "age": object})
    frame["customer_id"] = [f"客户-{i:03d}-ü🙂" for i in range(200)]
    frame["annual_income"] = [f"{v:.2f}" for v in frame["annual_income"]]
    frame["age"] = [f"{v:g}" for v in frame["age"]]
    planted = {  # row: (column, raw value, expected reason or None when it must be segmented)
        0: ("annual_income", "12,000", None),  # thousands separator: parsed as 12000
        1: ("annual_income", "n/a", "non_numeric:annual_income"),
        2: ("annual_income", None, "missing:annual_income"),  # SQL NULL
        3: ("annual_income", "inf", "non_finite:annual_income"),
        4: ("annual_income", "-5", "out_of_range:annual_income"),  # impossible: negative income
        5: ("annual_income", "1e300", "out_of_range:annual_income"),  # huge
        6: ("annual_income", " 42 ", None),  # padded, plausible
        7: ("age", "-3", "out_of_range:age"),
        8: ("age", "250", "out_of_range:age"),
        11: ("annual_income", "", "missing:annual_income"),
        12: ("annual_income", "NaN", "non_numeric:annual_income"),
        13: ("annual_income", "1,5", "non_numeric:annual_income"),  # a decimal comma is not a number here
        14: ("age", "4.5e1", None),
    }
    for row, (column, value, _) in planted.items():
        frame.loc[row, column] = value
    frame.loc[9, "customer_id"] = frame.loc[10, "customer_id"]  # a duplicate id: the first row wins
    _load(engine, f"customers_{suffix}", frame, varchar=("customer_id", "age", "annual_income"))
    config = fast_config(tmp_path, mysql_database_url, mlflow_store, suffix, **{"source.updated_at_column": None})

    code, summary, error = _run(config, capsys)
    assert code == 0, error
    rejects = _assert_accounted(engine, suffix, summary, frame["customer_id"].tolist())
    expected = {frame.loc[r, "customer_id"]: reason for r, (_, _, reason) in planted.items() if reason}
    expected[frame.loc[10, "customer_id"]] = "duplicate_id"
    assert dict(zip(rejects["customer_id"], rejects["reason"], strict=True)) == expected
    segments = table_rows(engine, f"seg_{suffix}")
    for row in (0, 6, 14):
        assert frame.loc[row, "customer_id"] in set(segments["customer_id"])
    assert set(segments["customer_id"]) >= {"客户-199-ü🙂"}  # unicode ids round-trip exactly


def test_a_constant_feature_is_segmented_on_the_others(tmp_path, mysql_database_url, engine, mlflow_store,
                                                       suffix, capsys):
    frame = _customers(200).assign(spending_score=50.0)
    _load(engine, f"customers_{suffix}", frame)
    config = fast_config(tmp_path, mysql_database_url, mlflow_store, suffix, **{"source.updated_at_column": None})
    code, summary, error = _run(config, capsys)
    assert code == 0, error
    _assert_accounted(engine, suffix, summary, frame["customer_id"].astype(str).tolist())
    assert summary["n_rejected"] == 0 and summary["k"] == 4


def test_csv_with_bom_crlf_tabs_and_a_trailing_empty_line_through_load_csv_then_run(
    tmp_path, mysql_database_url, engine, mlflow_store, suffix, capsys
):
    frame = _customers(240)
    lines = ["CustomerID\tGenre\tAge\tAnnual Income (k$)\tSpending Score (1-100)"]
    lines += [f"{r.customer_id}\t{'Female' if r.customer_id % 2 else 'Male'}\t{r.age:g}\t{r.annual_income / 1000:.1f}"
              f"\t{r.spending_score:g}" for r in frame.itertuples()]
    path = tmp_path / "Mall_Customers.csv"
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
    config = fast_config(tmp_path, mysql_database_url, mlflow_store, suffix)
    code = cli.main(["--config", str(config), "load-csv", str(path),
                     "--rename", "Annual Income (k$)=annual_income", "--rename", "Spending Score (1-100)=spending_score",
                     "--rename", "Genre=gender", "--rename", "CustomerID=customer_id"])
    assert code == 0, capsys.readouterr().err[-2000:]
    loaded = table_rows(engine, f"customers_{suffix}")
    assert list(loaded.columns) == ["customer_id", "gender", "age", "annual_income", "spending_score"]
    assert len(loaded) == 240  # the trailing empty line is not a customer

    code, summary, error = _run(config, capsys)
    assert code == 0, error
    _assert_accounted(engine, suffix, summary, frame["customer_id"].astype(str).tolist())
    assert summary["n_rejected"] == 0
