"""source.kind: transactions in the config: the shipped example loads, mistakes name the field."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml

from segmentation_pipeline.config import CONFIG_DIR, ConfigError, load_config
from segmentation_pipeline.core.rfm import SEGMENT_NAMES


def _write(tmp_path: Path, **source: Any) -> Path:
    raw = yaml.safe_load((CONFIG_DIR / "transactions.yaml").read_text())
    raw["source"] = {"kind": "transactions", "table": "orders", **source}
    raw.pop("features")
    raw["cleaning"]["ranges"] = {}
    raw["transform"]["log1p"] = []
    raw["naming"]["value_feature"] = None
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_transactions_config_reads_the_features_table(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SEGMENTATION_DATABASE_URL", raising=False)
    cfg = load_config(CONFIG_DIR / "transactions.yaml")
    assert cfg.source.kind == "transactions"
    assert (cfg.source.table, cfg.source.id_column, cfg.source.updated_at_column) == ("customer_features", "customer_id", None)
    assert cfg.transactions is not None and cfg.transactions.table == "orders" and cfg.transactions.amount == "amount"
    assert cfg.features == ["recency_days", "frequency", "monetary", "return_rate"]
    assert cfg.cleaning.categorical["rfm_segment"].allowed == SEGMENT_NAMES
    # the effective config round-trips (Dagster reloads it from its dump)
    assert type(cfg).model_validate(cfg.model_dump()) == cfg


def test_defaults_features_to_rfm_and_customers_mode_is_unchanged(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, amount="total", customer_id="client", as_of="2024-03-01", lookback_days=365))
    assert cfg.features == ["recency_days", "frequency", "monetary"]
    assert cfg.source.id_column == "client" and cfg.transactions is not None
    assert cfg.transactions.as_of == dt.date(2024, 3, 1) and cfg.transactions.lookback_days == 365
    default = load_config()
    assert default.source.kind == "customers" and default.transactions is None
    assert "rfm_segment" not in default.cleaning.categorical


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ({"amount": "amount", "quantity": "qty", "unit_price": "price"}, "either amount or quantity"),
        ({}, "give amount, or both quantity and unit_price"),
        ({"quantity": "qty"}, "give amount, or both quantity and unit_price"),
        ({"amount": "amount", "ordered": "x"}, "unknown field(s) ['ordered']"),
        ({"amount": "amount", "timestamp": "ordered at"}, "invalid transactions identifier"),
        ({"amount": "amount", "lookback_days": 0}, "lookback_days"),
        ({"amount": "amount", "as_of": "yesterday"}, "as_of"),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, source: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, **source))
    assert message in str(caught.value)


def test_unknown_kind_is_named(tmp_path: Path) -> None:
    path = _write(tmp_path, amount="amount")
    raw = yaml.safe_load(path.read_text())
    raw["source"]["kind"] = "invoices"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="kind"):
        load_config(path)
