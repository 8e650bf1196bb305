"""``load-csv`` never overwrites what the pipeline wrote (issue 20, finding 2)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from segmentation_pipeline import cli
from segmentation_pipeline.config import load_config
from segmentation_pipeline.storage.segment_store import FAILURES_TABLE
from segmentation_pipeline_tests.reliability.conftest import fast_config, table_rows

pytestmark = pytest.mark.mysql

CSV = "customer_id,age,annual_income,spending_score\n1,30,50000,40\n2,41,62000,70\n"


@pytest.mark.parametrize("twin", ["seg", "seg__staging", "seg__old", "rej", "rej__old", "hist", "seg__incoming",
                                  "failures"])
def test_load_csv_refuses_the_pipelines_own_tables(tmp_path, mysql_database_url, engine, suffix, capsys, twin):
    config = fast_config(tmp_path, mysql_database_url, (tmp_path / "mlruns").as_uri(), suffix)
    output = load_config(config).output
    table = {"seg": output.segments_table, "rej": output.rejects_table, "hist": output.history_table,
             "failures": FAILURES_TABLE}.get(twin) or {
        "seg__staging": f"{output.segments_table}__staging", "seg__old": f"{output.segments_table}__old",
        "rej__old": f"{output.rejects_table}__old", "seg__incoming": f"{output.segments_table}__incoming"}[twin]
    created = not sa.inspect(engine).has_table(table)  # the failures table may exist from other tests
    if created:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE `{table}` (customer_id BIGINT)")
            conn.exec_driver_sql(f"INSERT INTO `{table}` VALUES (7)")
    before = table_rows(engine, table)
    path = tmp_path / "base.csv"
    path.write_text(CSV)
    try:
        for extra in ([], ["--replace"]):
            assert cli.main(["--config", str(config), "load-csv", str(path), "--table", table, *extra]) == 1
            err = capsys.readouterr().err
            assert "refuses table" in err and repr(table) in err
            assert table_rows(engine, table).equals(before)
    finally:
        if created:
            with engine.begin() as conn:
                conn.exec_driver_sql(f"DROP TABLE IF EXISTS `{table}`")


def test_load_csv_needs_replace_for_an_existing_table_and_refuses_a_header_only_file(
    tmp_path, mysql_database_url, engine, suffix, capsys
):
    config = fast_config(tmp_path, mysql_database_url, (tmp_path / "mlruns").as_uri(), suffix)
    source = f"customers_{suffix}"
    path = tmp_path / "base.csv"
    path.write_text(CSV)
    assert cli.main(["--config", str(config), "load-csv", str(path)]) == 0
    assert cli.main(["--config", str(config), "load-csv", str(path)]) == 1
    assert "add --replace" in capsys.readouterr().err
    header_only = tmp_path / "header.csv"
    header_only.write_text(CSV.splitlines()[0] + "\n")
    assert cli.main(["--config", str(config), "load-csv", str(header_only), "--replace"]) == 1
    err = capsys.readouterr().err
    assert "no data rows" in err and "header.csv" in err
    assert len(table_rows(engine, source)) == 2
    binary = tmp_path / "blob.csv"
    binary.write_bytes(b"customer_id,age\n1,\xff\xfe\x81\n")
    assert cli.main(["--config", str(config), "load-csv", str(binary), "--replace"]) == 1
    err = capsys.readouterr().err
    assert "blob.csv" in err and "UTF-8" in err
    assert cli.main(["--config", str(config), "load-csv", str(path), "--replace"]) == 0
    assert sa.inspect(engine).has_table(source)
