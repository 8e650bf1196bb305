"""Config validation: every mistake is caught at load time with the field named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segmentation_pipeline.config import (
    DEFAULT_CONFIG,
    ConfigError,
    PipelineConfig,
    load_config,
    validate_identifier,
)


def _raw() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_configs_load(monkeypatch):
    monkeypatch.delenv("SEGMENTATION_DATABASE_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = load_config()
    mysql = load_config("configs/mysql.yaml")
    assert default.database.is_sqlite and not mysql.database.is_sqlite
    assert default.k_candidates == list(range(2, 11))
    assert default.features == ["age", "annual_income", "spending_score"]
    # relative stores resolve against the project, not the caller's cwd
    assert default.mlflow.tracking_uri.startswith("sqlite:////")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(k_range=[1, 5]), r"k_range \[1, 5\] must satisfy 2 <= low <= high"),
        (lambda r: r.update(k_range=[6, 3]), r"k_range \[6, 3\] must satisfy 2 <= low <= high"),
        (lambda r: r.update(min_segment_share=-0.1), r"min_segment_share -0.1 must be in \(0, 0.5\)"),
        (lambda r: r.update(min_segment_share=0), r"min_segment_share 0 must be in \(0, 0.5\)"),
        (lambda r: r.update(min_segment_share=0.5), r"min_segment_share 0.5 must be in \(0, 0.5\)"),
        (lambda r: r.update(features=[]), "features"),
        (lambda r: r.update(features=["age", "age"]), "listed twice"),
        (lambda r: r["source"].update(table="customers; DROP TABLE x"), "invalid source identifier"),
        (lambda r: r["cleaning"]["ranges"].update(height={"min": 0}), "not features"),
        (lambda r: r["cleaning"]["ranges"].update(age={"min": 50, "max": 10}), "above max"),
        (lambda r: r["transform"].update(pca_components=1.5), "pca_components"),
        (lambda r: r["transform"].update(pca_components=7), "exceeds"),
        (lambda r: r["transform"].update(log1p="yes"), "log1p"),
        (lambda r: r["transform"].update(log1p=["height"]), r"transform.log1p names columns that are not features"),
        (lambda r: r["transform"].update(log1p_skew_threshold=0), "log1p_skew_threshold"),
        (lambda r: r["cleaning"]["categorical"].update(channel={"allowed": [1, True]}), "allowed value True"),
        (lambda r: r["cleaning"]["categorical"].update(channel={"allowed": [1.5]}), "allowed value 1.5"),
        (lambda r: r["naming"].update(value_feature="height"), "value_feature"),
        (lambda r: r["cleaning"]["outliers"].update(action="drop"), "action"),
        (lambda r: r.update(unknown_section=1), "unknown_section"),
        (lambda r: r["drift"].update(feature_share_warn=0.9, feature_share_error=0.5), "warn thresholds"),
    ],
)
def test_invalid_configs_name_the_problem(tmp_path, change, message):
    raw = _raw()
    change(raw)
    with pytest.raises(ConfigError, match=message):
        load_config(_write(tmp_path, raw))


def test_fixed_k_and_env_overrides(tmp_path, monkeypatch):
    raw = _raw()
    raw["k"] = 4
    monkeypatch.setenv("SEGMENTATION_DATABASE_URL", "mysql+pymysql://seg:s3cret@db:3306/crm")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.k_candidates == [4]
    assert cfg.mlflow.tracking_uri == "http://127.0.0.1:5999"
    assert "s3cret" not in cfg.database.safe_url() and "s3cret" in cfg.database.sqlalchemy_url().render_as_string(False)
    assert all("s3cret" not in value for value in cfg.params().values())


def test_password_only_from_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMENTATION_DATABASE_URL", raising=False)
    monkeypatch.setenv("SEGMENTATION_DATABASE_PASSWORD", "p@ss/word")
    cfg = load_config("configs/mysql.yaml")
    assert cfg.database.sqlalchemy_url().password == "p@ss/word"
    assert "p@ss" not in cfg.database.safe_url()


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("features: [a, b\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize("name", ["a`b", "x y", "1abc", "t;drop", "", "a" * 65, "naïve"])
def test_identifiers_reject_injection(name):
    with pytest.raises(ConfigError):
        validate_identifier(name)


def test_model_is_frozen():
    cfg = PipelineConfig.model_validate(
        {"database": {"url": "sqlite://"}, "source": {"table": "t"}, "features": ["a"], "mlflow": {"tracking_uri": "x"}}
    )
    with pytest.raises(Exception):
        cfg.features = ["b"]  # type: ignore[misc]


def test_engine_defaults_to_local_and_spark_section_is_typed(tmp_path, monkeypatch):
    monkeypatch.delenv("SEGMENTATION_ENGINE", raising=False)
    monkeypatch.delenv("SEGMENTATION_SPARK_MASTER", raising=False)
    assert load_config().engine == "local"
    spark = load_config("configs/spark.yaml")
    assert spark.engine == "spark" and spark.spark.master == "local[2]" and spark.spark.num_partitions == 8
    assert spark.params()["spark.master"] == "local[2]"  # logged to MLflow like every other setting
    raw = _raw()
    raw["spark"] = {"master": "spark://head:7077", "executor_memory": "8g", "executor_cores": 4}
    raw["engine"] = "spark"
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.spark.spark_conf()["spark.executor.memory"] == "8g" and not cfg.spark.is_local
    monkeypatch.setenv("SEGMENTATION_ENGINE", "local")
    monkeypatch.setenv("SEGMENTATION_SPARK_MASTER", "yarn")
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.engine == "local" and cfg.spark.master == "yarn"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine": "dask"}, "engine"),
        ({"spark": {"executor_memory": "lots"}}, "memory"),
        ({"spark": {"num_partitions": 0}}, "num_partitions"),
        ({"spark": {"masterr": "local[2]"}}, "masterr"),
        ({"spark": {"extra_conf": {"fs.s3a.endpoint": "x"}}}, "spark.*"),
        ({"spark": {"extra_conf": {"spark.hadoop.fs.s3a.secret.key": "x"}}}, "credentials"),
        ({"spark": {"extra_conf": {"spark.jdbc.password": "x"}}}, "credentials"),
    ],
)
def test_invalid_engine_settings_name_the_problem(tmp_path, change, message):
    raw = {**_raw(), **change}
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")):
        load_config(_write(tmp_path, raw))


def test_log1p_is_auto_by_default_and_categories_may_be_ints(tmp_path):
    raw = _raw()
    del raw["transform"]["log1p"]
    raw["cleaning"]["categorical"] = {"channel": {"allowed": [1, "2", 3.0]}}
    cfg = load_config(_write(tmp_path, raw))
    assert cfg.transform.log1p_auto and cfg.transform.log1p_skew_threshold == 1.0
    assert cfg.cleaning.categorical["channel"].allowed == [1, "2", 3]
    raw["transform"]["log1p"] = []  # an explicit empty list: no column is logged
    assert load_config(_write(tmp_path, raw)).transform.log1p_columns == []
