"""A champion trained on other features is not compared as the same model (issue 20, finding 5)."""

from __future__ import annotations

import json

import pytest

from segmentation_pipeline import cli
from segmentation_pipeline_tests.reliability.conftest import (
    fast_config,
    seeded_source,
    table_rows,
)

pytestmark = pytest.mark.mysql


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_features_changed_is_recorded_and_follows_the_policy(
    tmp_path, mysql_database_url, local_mlflow_uri, suffix, capsys
) -> None:
    engine = seeded_source(mysql_database_url, suffix, 300, 5)
    config = fast_config(tmp_path, mysql_database_url, local_mlflow_uri, suffix)
    assert cli.main(["run", "--config", str(config), "--json"]) == 0, capsys.readouterr().err[-2000:]
    capsys.readouterr()

    refuse = fast_config(tmp_path, mysql_database_url, local_mlflow_uri, suffix, name="refuse.yaml",
                         **{"promotion.on_features_changed": "refuse"})
    assert cli.main(["run", "--config", str(refuse), "--features", "age,annual_income"]) == 1
    err = capsys.readouterr().err
    assert "PromotionRefused" in err and "features changed" in err and "on_features_changed" in err
    assert set(table_rows(engine, f"seg_{suffix}")["model_version"].astype(str)) == {"1"}

    assert cli.main(["run", "--config", str(config), "--features", "age,annual_income", "--json"]) == 0, \
        capsys.readouterr().err[-2000:]
    summary = _summary(capsys)
    assert summary["promoted"] is True
    assert any("features changed" in reason for reason in summary["promotion_reasons"])
    assert set(table_rows(engine, f"seg_{suffix}")["model_version"].astype(str)) == {summary["model_version"]}
    engine.dispose()


@pytest.mark.parametrize("bad", [",", "", " , ", "age,,annual_income", "age,age", "age;drop", "age,"])
def test_features_list_is_validated(tmp_path, local_mlflow_uri, suffix, capsys, bad) -> None:
    config = fast_config(tmp_path, "sqlite:///unused.db", local_mlflow_uri, suffix)
    assert cli.main(["run", "--config", str(config), "--features", bad]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ConfigError: --features"), err
