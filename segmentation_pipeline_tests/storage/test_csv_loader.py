"""read_csv_file: the messy exports people actually have, loaded into both backends."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from segmentation_pipeline.config import ConfigError
from segmentation_pipeline.storage.csv_loader import read_csv_file, snake_case
from segmentation_pipeline.storage.reads import read_table
from segmentation_pipeline.storage.bulk_load import load_frame

MALL = (
    "CustomerID,Genre,Age,Annual Income (k$),Spending Score (1-100)\n"
    "1,Male,19,15,39\n"
    "2,Male,21,15,81\n"
    "3,Female,20,16,6\n"
)


def test_bom_crlf_tab_and_trailing_empty_line(tmp_path: Path) -> None:
    path = tmp_path / "export.tsv"
    path.write_bytes(
        "\ufeffCustomerID\tName\tAnnual Income (k$)\r\n1\tZoë\t15.5\r\n2\tJosé, Jr.\t20\r\n\r\n".encode("utf-8")
    )
    frame = read_csv_file(path)
    assert list(frame.columns) == ["customer_id", "name", "annual_income_k"]
    assert frame["customer_id"].tolist() == [1, 2]
    assert frame["name"].tolist() == ["Zoë", "José, Jr."]  # the comma did not split a tab file
    assert frame["annual_income_k"].tolist() == [15.5, 20.0]


def test_semicolon_export(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("Kunde;Alter;Umsatz\n1;30;1,5\n2;40;2\n;;\n", encoding="utf-8")
    frame = read_csv_file(path)
    assert list(frame.columns) == ["kunde", "alter", "umsatz"]
    assert len(frame) == 2  # the ";;" spreadsheet line is dropped


def test_mall_customers_header_with_rename(tmp_path: Path) -> None:
    path = tmp_path / "Mall_Customers.csv"
    path.write_text(MALL, encoding="utf-8")
    frame = read_csv_file(path, rename={"Annual Income (k$)": "annual_income", "Genre": "gender"})
    assert list(frame.columns) == ["customer_id", "gender", "age", "annual_income", "spending_score_1_100"]
    assert frame["annual_income"].tolist() == [15, 15, 16]
    by_snake = read_csv_file(path, rename={"spending_score_1_100": "spending_score"})
    assert "spending_score" in by_snake.columns


def test_rename_errors(tmp_path: Path) -> None:
    path = tmp_path / "mall.csv"
    path.write_text(MALL, encoding="utf-8")
    with pytest.raises(ValueError, match="Annual Incme"):
        read_csv_file(path, rename={"Annual Incme": "annual_income"})
    with pytest.raises(ConfigError):
        read_csv_file(path, rename={"Age": "age; DROP TABLE customers"})
    with pytest.raises(ValueError, match="collide"):
        read_csv_file(path, rename={"Age": "genre"})


def test_colliding_headers_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "dupes.csv"
    path.write_text("Customer ID,customer_id\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="collide"):
        read_csv_file(path)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("CustomerID", "customer_id"),
        ("Spending Score (1-100)", "spending_score_1_100"),
        ("Annual Income (k$)", "annual_income_k"),
        ("  e-mail  ", "e_mail"),
        ("HTTPServerName", "http_server_name"),
        ("2024 revenue", "col_2024_revenue"),
        ("already_snake", "already_snake"),
    ],
)
def test_snake_case(header: str, expected: str) -> None:
    assert snake_case(header) == expected


def test_csv_to_database_round_trip(tmp_path: Path, db: sa.Engine, table_name: str) -> None:
    path = tmp_path / "mall.csv"
    path.write_text(MALL, encoding="utf-8-sig")
    frame = read_csv_file(path, rename={"Annual Income (k$)": "annual_income", "Genre": "gender"})
    assert load_frame(db, table_name, frame, primary_key="customer_id") == 3
    out = read_table(db, table_name, None, id_column="customer_id", chunk_size=2)
    pd.testing.assert_frame_equal(out, frame)
