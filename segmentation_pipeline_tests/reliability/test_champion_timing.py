"""The champion alias moves with the write-back, never before it (issue 20, finding 6)."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from segmentation_pipeline import cli
from segmentation_pipeline.storage.faults import injected
from segmentation_pipeline_tests.reliability.conftest import (
    fast_config,
    seeded_source,
    table_rows,
)

pytestmark = pytest.mark.mysql

ALWAYS_PROMOTE = {"promotion.min_silhouette_gain": -10.0, "promotion.max_davies_bouldin_ratio": 1000.0,
                  "promotion.min_stability": 0.0}


class SwapRefused(RuntimeError):
    pass


def _refuse(**_: object) -> None:
    raise SwapRefused("forced: the swap fails after the alias moved")


def test_a_failed_write_back_leaves_the_champion_on_the_published_version(
    tmp_path, mysql_database_url, local_mlflow_uri, suffix, capsys
) -> None:
    engine = seeded_source(mysql_database_url, suffix, 300, 3)
    config = fast_config(tmp_path, mysql_database_url, local_mlflow_uri, suffix, **ALWAYS_PROMOTE)
    client = MlflowClient(local_mlflow_uri)

    def champion() -> str | None:
        aliases = client.get_registered_model(f"rel_{suffix}").aliases
        version = aliases.get("champion")
        return None if version is None else str(version)

    def published_versions() -> set[str]:
        return set(table_rows(engine, f"seg_{suffix}")["model_version"].astype(str))

    assert cli.main(["run", "--config", str(config)]) == 0, capsys.readouterr().err[-2000:]
    assert champion() == "1" and published_versions() == {"1"}

    with injected("before_swap", _refuse):  # after the alias moved, before RENAME: every attempt
        assert cli.main(["run", "--config", str(config)]) == 1
    assert "forced: the swap fails" in capsys.readouterr().err
    assert champion() == "1" and published_versions() == {"1"}  # the gate promoted v2, the tables did not move

    assert cli.main(["run", "--config", str(config)]) == 0, capsys.readouterr().err[-2000:]
    assert champion() == "3" and published_versions() == {"3"}
    engine.dispose()
