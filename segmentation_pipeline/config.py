"""Typed pipeline configuration: YAML in ``configs/`` validated into frozen pydantic models.

Config is data. Secrets never live here: database credentials come from
``SEGMENTATION_DATABASE_URL`` (or the password alone from ``SEGMENTATION_DATABASE_PASSWORD``),
and :meth:`DatabaseConfig.safe_url` is the only form of the URL that may be logged.
"""

from __future__ import annotations

import os
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy.engine import URL, make_url

from segmentation_pipeline.core.algorithms import (
    ALGORITHM_NAMES,
    DEFAULT_ALGORITHM,
    check_algorithm,
)
from segmentation_pipeline.core.rfm import RFM_SEGMENT_COLUMN, SEGMENT_NAMES

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"

ENV_CONFIG = "SEGMENTATION_CONFIG"
ENV_DATABASE_URL = "SEGMENTATION_DATABASE_URL"
ENV_DATABASE_PASSWORD = "SEGMENTATION_DATABASE_PASSWORD"
ENV_DATA_DIR = "SEGMENTATION_DATA_DIR"
ENV_MLFLOW_URI = "MLFLOW_TRACKING_URI"
ENV_ENGINE = "SEGMENTATION_ENGINE"
ENV_SPARK_MASTER = "SEGMENTATION_SPARK_MASTER"
# Spark settings that carry credentials belong in the environment or spark-defaults.conf, never
# in a YAML file that is also logged to MLflow as params.
_SECRET_CONF = re.compile(r"password|secret|token|credential|access\.?key", re.IGNORECASE)

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the field."""


def validate_identifier(name: str, what: str = "identifier") -> str:
    """Table and column names reach SQL; only plain identifiers are allowed (no quoting tricks)."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise ConfigError(
            f"invalid {what} {name!r}: use letters, digits and underscores, starting with a letter "
            "or underscore, at most 64 characters"
        )
    return name


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatabaseConfig(_Model):
    url: str
    chunk_size: int = Field(200_000, gt=0, description="rows per extraction/write-back chunk")
    lock_timeout_s: int = Field(600, ge=0, description="wait for a concurrent run's write-back")

    def sqlalchemy_url(self) -> URL:
        """The URL with the password from the environment filled in when the file omits it."""
        url = make_url(self.url)
        password = os.environ.get(ENV_DATABASE_PASSWORD)
        if password and url.password is None and not url.drivername.startswith("sqlite"):
            url = url.set(password=password)
        if url.drivername.startswith("sqlite") and url.database and url.database != ":memory:":
            path = Path(url.database)
            if not path.is_absolute():
                url = url.set(database=str((PROJECT_ROOT / path).resolve()))
        return url

    def safe_url(self) -> str:
        """The URL with any password masked: the only form allowed in logs and metadata."""
        return self.sqlalchemy_url().render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return make_url(self.url).drivername.startswith("sqlite")


class SourceConfig(_Model):
    """The per-customer table the chain reads (``kind: transactions``: the features built from orders)."""

    kind: Literal["customers", "transactions"] = "customers"
    table: str
    id_column: str = "customer_id"
    updated_at_column: str | None = None

    @field_validator("table", "id_column", "updated_at_column")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else validate_identifier(value, "source identifier")


#: The table ``kind: transactions`` writes and the chain then reads.
ORDER_FEATURES_TABLE = "customer_features"
#: The features a transactions source segments on when ``features`` is not given.
DEFAULT_ORDER_FEATURES = ["recency_days", "frequency", "monetary"]


class TransactionsConfig(_Model):
    """An orders table to aggregate into per-customer features (``source.kind: transactions``).

    Written in YAML under ``source:``; :class:`PipelineConfig` moves it here and points ``source``
    at the features table, so everything after the aggregation reads a customer table as usual.
    """

    table: str
    customer_id: str = "customer_id"
    order_id: str = "order_id"
    timestamp: str = "ordered_at"
    amount: str | None = None
    quantity: str | None = None
    unit_price: str | None = None
    as_of: date | None = Field(None, description="default: the day after the latest timestamp")
    lookback_days: int | None = Field(None, ge=1, description="only orders within this many days before as_of")
    attributes_table: str | None = Field(None, description="per-customer table joined on customer_id")
    features_table: str = ORDER_FEATURES_TABLE

    @field_validator(
        "table", "customer_id", "order_id", "timestamp", "amount", "quantity", "unit_price", "attributes_table",
        "features_table",
    )
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return None if value is None else validate_identifier(value, "transactions identifier")

    @model_validator(mode="after")
    def _one_amount(self) -> TransactionsConfig:
        priced = self.quantity is not None or self.unit_price is not None
        if self.amount is not None and priced:
            raise ValueError("source: give either amount or quantity + unit_price, not both")
        if self.amount is None and (self.quantity is None or self.unit_price is None):
            raise ValueError("source: give amount, or both quantity and unit_price (line amount = quantity x unit_price)")
        return self


_TRANSACTION_FIELDS = set(TransactionsConfig.model_fields)


def _split_transactions(raw: Any) -> Any:
    """``source: {kind: transactions, ...}`` -> ``transactions`` + a source reading the features table."""
    if not isinstance(raw, dict) or "transactions" in raw:
        return raw
    source = raw.get("source")
    if not isinstance(source, dict) or source.get("kind") != "transactions":
        return raw
    unknown = sorted(set(source) - _TRANSACTION_FIELDS - {"kind"})
    if unknown:
        raise ValueError(f"source (kind: transactions) has unknown field(s) {unknown}; known: {sorted(_TRANSACTION_FIELDS)}")
    orders = {k: v for k, v in source.items() if k != "kind"}
    out = dict(raw)
    out["transactions"] = orders
    out["source"] = {
        "kind": "transactions",
        "table": orders.get("features_table", ORDER_FEATURES_TABLE),
        "id_column": orders.get("customer_id", "customer_id"),
    }
    out.setdefault("features", list(DEFAULT_ORDER_FEATURES))
    # the named RFM segment is profiled per cluster like any categorical column
    cleaning = dict(out.get("cleaning") or {})
    categorical = dict(cleaning.get("categorical") or {})
    categorical.setdefault(RFM_SEGMENT_COLUMN, {"allowed": list(SEGMENT_NAMES), "required": False})
    out["cleaning"] = {**cleaning, "categorical": categorical}
    return out


class Range(_Model):
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Range":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"range min {self.min} is above max {self.max}")
        return self


class CategoricalRule(_Model):
    """Allowed values of a column not clustered on. Ints and strings may be mixed: values are
    compared on their canonical text (``core.cleaning_rules.category_text``), so an integer-coded
    column (channel 1/2) matches ``[1, 2]`` and ``["1", "2"]``, read as int, text or float."""

    allowed: list[int | str]
    required: bool = False

    @field_validator("allowed", mode="before")
    @classmethod
    def _no_bool_or_fraction(cls, value: Any) -> Any:
        for item in value if isinstance(value, list) else []:
            if isinstance(item, bool) or (isinstance(item, float) and not item.is_integer()):
                raise ValueError(f"allowed value {item!r} must be an integer or a string (quote it)")
        return value


class OutlierConfig(_Model):
    enabled: bool = True
    iqr_multiplier: float = Field(1.5, gt=0)
    features: list[str] | None = Field(None, description="defaults to all features")
    action: Literal["flag", "reject"] = Field(
        "flag", description="flag: keep out of fitting but still segment; reject: record as rejected"
    )
    method: Literal["auto", "pooled", "segment_aware"] = Field(
        "auto", description="auto: pooled fences unless they exclude more than max_share"
    )
    max_share: float = Field(0.05, ge=0, le=1)
    on_excess: Literal["segment_aware", "widen", "fail"] = "segment_aware"


class CleaningConfig(_Model):
    ranges: dict[str, Range] = Field(default_factory=dict)
    categorical: dict[str, CategoricalRule] = Field(default_factory=dict)
    missing: Literal["reject", "impute_median"] = "reject"
    outliers: OutlierConfig = OutlierConfig()


#: ``transform.log1p: auto``: decide per training run which columns to log1p (core.skew).
LOG1P_AUTO = "auto"


class TransformConfig(_Model):
    log1p: list[str] | Literal["auto"] = Field(
        LOG1P_AUTO,
        description=(
            "auto: log1p every feature with min >= 0 and sample skewness > log1p_skew_threshold that "
            "log1p makes less skewed, decided once per training run on the clean rows; a list: exactly "
            "these columns ([] for none)"
        ),
    )
    log1p_skew_threshold: float = Field(
        1.0, gt=0, description="auto: skewness above which a column is logged (1.0: Bulmer's 'highly skewed')"
    )
    pca_components: int | float | None = Field(
        0.95, description="int: number of components; float in (0,1]: explained-variance target; null: no PCA"
    )
    float32: bool = True

    @field_validator("pca_components")
    @classmethod
    def _pca(cls, value: int | float | None) -> int | float | None:
        if value is None:
            return None
        if isinstance(value, float) and not value.is_integer() and not 0 < value <= 1:
            raise ValueError(f"pca_components {value} must be an integer >= 1 or a fraction in (0, 1]")
        if isinstance(value, float) and value.is_integer() and value > 1:
            return int(value)
        if isinstance(value, int) and value < 1:
            raise ValueError(f"pca_components {value} must be >= 1")
        return value

    @property
    def log1p_auto(self) -> bool:
        return self.log1p == LOG1P_AUTO

    @property
    def log1p_columns(self) -> list[str]:
        """The columns to log1p; raises while ``log1p`` is still ``auto``: the choice is made once per
        run on the clean rows (core.skew.resolve_log1p) and every later stage reads that choice."""
        if self.log1p == LOG1P_AUTO:
            raise ValueError(
                "transform.log1p is 'auto' and has not been resolved for this run: resolve it on the clean rows "
                "first (core.skew.resolve_log1p) and pass the resolved config on"
            )
        return list(self.log1p)


class KSelectionConfig(_Model):
    silhouette_sample: int = Field(10_000, ge=100, description="rows sampled for silhouette once n is larger")
    silhouette_tolerance: float = Field(
        0.02, ge=0, description="the knee wins when its silhouette is this close to the best"
    )
    sweep_n_init: int = Field(
        3, ge=1, description="restarts per k in the sweep; 1 lets one bad local optimum pick the wrong k"
    )
    sweep_max_rows: int = Field(
        100_000, ge=1000,
        description="rows sampled for the sweep fits (they only place the centroids that label the silhouette "
                    "sample and give the elbow's WCSS); the final model uses all rows",
    )
    eval_rows: int = Field(
        10_000, ge=100, description="rows sampled for the gap, stability, smallest share and BIC evidence"
    )
    gap_references: int = Field(5, ge=1, description="reference draws B for the gap statistic")
    stability_resamples: int = Field(5, ge=1, description="refits on 80% subsamples per k for stability")
    min_stability: float = Field(
        0.9, gt=0, le=1, description="a k whose refits agree less (mean ARI) is not chosen when a stabler k exists"
    )


class ModelConfig(_Model):
    name: str = "customer_segmentation"
    algorithm: str = Field(
        DEFAULT_ALGORITHM, description=f"clustering algorithm: {', '.join(ALGORITHM_NAMES)} (core.algorithms)"
    )
    n_init: int = Field(10, ge=1)
    max_iter: int = Field(300, ge=10)
    restart_rows: int | None = Field(
        100_000, ge=1000,
        description="kmeans, local engine: above twice this many fit rows the n_init restarts run on a seeded "
                    "sample of this many rows and the best is refined on every row; null: every restart on every row",
    )
    random_state: int = 42
    alias: str = "champion"
    challenger_alias: str = "challenger"

    @field_validator("algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        return check_algorithm(value)


class NamingConfig(_Model):
    value_feature: str | None = None
    tiers: list[str] = Field(default_factory=list, description="e.g. [VIP, Gold, Premium, Regular], best first")
    high_threshold: float = Field(0.5, description="z-score of a segment mean above which it reads 'High'")


class MlflowConfig(_Model):
    tracking_uri: str
    experiment: str = "customer-segmentation"
    artifact_location: str | None = None


class ExportConfig(_Model):
    """A file of the published segments written after each write-back (the segment_export asset)."""

    path: str = Field(description="file to write; relative paths are under data_dir")
    format: Literal["csv", "parquet"] = "csv"
    segments: list[int] = Field(default_factory=list, description="only these segment ids; empty: every segment")


class OutputConfig(_Model):
    segments_table: str = "customer_segments"
    rejects_table: str = "customer_rejects"
    history_table: str = "segment_assignments"
    export: ExportConfig | None = Field(None, description="write the segments to a file after each write-back")

    @field_validator("segments_table", "rejects_table", "history_table")
    @classmethod
    def _identifier(cls, value: str) -> str:
        return validate_identifier(value, "output table")


class PromotionConfig(_Model):
    """Champion/challenger gate; field names match ``core.promotion.PromotionGate``."""

    min_silhouette_gain: float = -0.01
    max_davies_bouldin_ratio: float = Field(1.05, gt=0)
    min_stability: float = Field(0.8, ge=0, le=1)
    min_agreement: float | None = Field(None, ge=-1, le=1)
    bootstrap_rounds: int = Field(10, ge=2, description="stability compares pairs of fits")
    sample: int = Field(10_000, ge=100, description="rows for the silhouette comparison (O(n^2))")
    on_features_changed: Literal["promote", "refuse"] = Field(
        "promote", description="a champion trained on other features is not comparable: replace it, or stop the run"
    )


class DriftConfig(_Model):
    """Thresholds for the drift check; field names match ``core.drift.DriftThresholds``."""

    feature_share_warn: float = Field(0.3, ge=0, le=1)
    feature_share_error: float = Field(0.5, ge=0, le=1)
    segment_psi_warn: float = Field(0.1, ge=0)
    segment_psi_error: float = Field(0.25, ge=0)
    sample: int = Field(50_000, ge=100)

    @model_validator(mode="after")
    def _ordered(self) -> "DriftConfig":
        if self.feature_share_warn > self.feature_share_error or self.segment_psi_warn > self.segment_psi_error:
            raise ValueError("drift warn thresholds must not exceed their error thresholds")
        return self


class ChecksConfig(_Model):
    """Asset-check limits on a training run (``assets.checks``)."""

    max_rejected_share: float = Field(
        0.5, ge=0, le=1, description="more rejected rows than this share of the input stops the write-back"
    )
    min_segment_share: float = Field(0.01, ge=0, le=1, description="a smaller segment is reported as a warning")


class ScheduleConfig(_Model):
    cron: str
    timezone: str = "UTC"
    enabled: bool = True


class SensorConfig(_Model):
    enabled: bool = True
    interval_s: int = Field(60, ge=5)


class AutomationConfig(_Model):
    retrain: ScheduleConfig = ScheduleConfig(cron="0 3 * * 1")
    score: ScheduleConfig = ScheduleConfig(cron="0 4 * * *")
    drift: ScheduleConfig = ScheduleConfig(cron="0 5 * * *")  # daily, after scoring
    new_customers_sensor: SensorConfig = SensorConfig()
    drift_sensor: SensorConfig = SensorConfig(interval_s=300)


ENV_JDBC_JAR = "SPARK_JDBC_JAR"
#: Debian/Ubuntu ``libmariadb-java`` installs the MariaDB Connector/J here.
DEFAULT_JDBC_JAR = "/usr/share/java/mariadb-java-client.jar"

_SPARK_MEMORY = re.compile(r"^\d+[kmgt]?b?$", re.IGNORECASE)


def default_jdbc_jar() -> str:
    return os.environ.get(ENV_JDBC_JAR) or DEFAULT_JDBC_JAR


class SparkSettings(BaseModel):
    """Where and how big the Spark session is (``engine: spark``). Frozen: a session is built from one settings value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    master: str = Field("local[2]", description="local[N], spark://host:7077, yarn, k8s://...")
    app_name: str = "segmentation-pipeline"
    executor_memory: str | None = Field(None, description="e.g. 4g; cluster masters only")
    executor_cores: int | None = Field(None, ge=1)
    driver_memory: str | None = Field(None, description="e.g. 4g; in local mode this is the whole heap")
    jdbc_driver_jar: str = Field(default_factory=default_jdbc_jar, description="env SPARK_JDBC_JAR overrides the default")
    num_partitions: int = Field(
        8, ge=1, description="JDBC read/write partitions; also spark.sql.shuffle.partitions unless extra_conf sets it"
    )
    extra_conf: dict[str, str] = Field(default_factory=dict, description="any spark.* setting; wins over the defaults")
    kmeans_n_init: int = Field(
        1, ge=1, description="MLlib KMeans restarts per fit (sweep and final model); k-means|| seeding rarely needs more"
    )

    @field_validator("executor_memory", "driver_memory")
    @classmethod
    def _memory(cls, value: str | None) -> str | None:
        if value is not None and not _SPARK_MEMORY.match(value):
            raise ValueError(f"memory {value!r} must look like 512m, 4g or 4096")
        return value

    @field_validator("extra_conf")
    @classmethod
    def _conf(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [key for key in value if not key.startswith("spark.")]
        if bad:
            raise ValueError(f"extra_conf keys must be spark.* settings, got {bad}")
        return {str(k): str(v) for k, v in value.items()}

    @property
    def is_local(self) -> bool:
        return self.master.startswith("local")

    def spark_conf(self) -> dict[str, str]:
        """Every setting the builder applies, defaults first and ``extra_conf`` last."""
        utc = "-Duser.timezone=UTC"
        conf: dict[str, str] = {
            "spark.app.name": self.app_name,
            "spark.master": self.master,
            "spark.jars": self.jdbc_driver_jar,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": str(self.num_partitions),
            "spark.sql.session.timeZone": "UTC",
            # JDBC getTimestamp/setTimestamp use the JVM zone: UTC keeps DATETIME wall clocks as stored
            "spark.driver.extraJavaOptions": utc,
            "spark.executor.extraJavaOptions": utc,
            "spark.sql.execution.arrow.pyspark.enabled": "true",
        }
        if self.is_local:
            conf["spark.driver.host"] = "127.0.0.1"
            conf["spark.driver.bindAddress"] = "127.0.0.1"
        if self.executor_memory:
            conf["spark.executor.memory"] = self.executor_memory
        if self.executor_cores:
            conf["spark.executor.cores"] = str(self.executor_cores)
        if self.driver_memory:
            conf["spark.driver.memory"] = self.driver_memory
        conf.update(self.extra_conf)
        return conf


class PipelineConfig(_Model):
    database: DatabaseConfig
    source: SourceConfig
    transactions: TransactionsConfig | None = Field(None, description="set from source when kind is transactions")
    features: list[str] = Field(min_length=1)
    k_range: tuple[int, int] = (2, 10)
    k: int | None = Field(None, ge=1)
    min_segment_share: float = Field(
        0.01, description="a candidate k whose smallest segment holds a smaller share is marked and not chosen"
    )
    cleaning: CleaningConfig = CleaningConfig()
    transform: TransformConfig = TransformConfig()
    k_selection: KSelectionConfig = KSelectionConfig()
    model: ModelConfig = ModelConfig()
    naming: NamingConfig = NamingConfig()
    mlflow: MlflowConfig
    output: OutputConfig = OutputConfig()
    promotion: PromotionConfig = PromotionConfig()
    drift: DriftConfig = DriftConfig()
    automation: AutomationConfig = AutomationConfig()
    checks: ChecksConfig = ChecksConfig()
    data_dir: str = "data"
    engine: Literal["local", "spark"] = Field("local", description="local: pandas/scikit-learn; spark: Spark MLlib")
    spark: SparkSettings = Field(default_factory=SparkSettings, description="used when engine is spark")

    @model_validator(mode="before")
    @classmethod
    def _transactions_source(cls, raw: Any) -> Any:
        return _split_transactions(raw)

    @field_validator("spark")
    @classmethod
    def _no_spark_secrets(cls, value: SparkSettings) -> SparkSettings:
        secret = sorted(key for key in value.extra_conf if _SECRET_CONF.search(key))
        if secret:
            raise ValueError(
                f"spark.extra_conf {secret} look like credentials: set them in the environment or "
                "spark-defaults.conf, not in the config file"
            )
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value: list[str]) -> list[str]:
        for name in value:
            validate_identifier(name, "feature column")
        if len(set(value)) != len(value):
            raise ValueError(f"features listed twice: {sorted({f for f in value if value.count(f) > 1})}")
        return value

    @field_validator("k_range")
    @classmethod
    def _k_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        low, high = value
        if low < 2 or high < low:
            raise ValueError(f"k_range {list(value)} must satisfy 2 <= low <= high")
        return value

    @field_validator("min_segment_share")
    @classmethod
    def _min_segment_share(cls, value: float) -> float:
        if not 0 < value < 0.5:
            raise ValueError(f"min_segment_share {value:g} must be in (0, 0.5)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> "PipelineConfig":
        if (self.source.kind == "transactions") != (self.transactions is not None):
            raise ValueError("transactions settings belong under source with kind: transactions")
        known = set(self.features)
        for section, names in (
            ("cleaning.ranges", self.cleaning.ranges),
            ("transform.log1p", [] if self.transform.log1p_auto else self.transform.log1p_columns),
            ("cleaning.outliers.features", self.cleaning.outliers.features or []),
        ):
            unknown = sorted(set(names) - known)
            if unknown:
                raise ValueError(f"{section} names columns that are not features: {unknown}")
        for name in self.cleaning.categorical:
            validate_identifier(name, "categorical column")
        if self.naming.value_feature is not None and self.naming.value_feature not in known:
            raise ValueError(f"naming.value_feature {self.naming.value_feature!r} is not a feature")
        if isinstance(self.transform.pca_components, int) and self.transform.pca_components > len(self.features):
            raise ValueError(
                f"transform.pca_components={self.transform.pca_components} exceeds the "
                f"{len(self.features)} features"
            )
        return self

    @property
    def k_candidates(self) -> list[int]:
        return [self.k] if self.k is not None else list(range(self.k_range[0], self.k_range[1] + 1))

    @property
    def data_path(self) -> Path:
        path = Path(self.data_dir)
        return path if path.is_absolute() else PROJECT_ROOT / path

    def params(self) -> dict[str, Any]:
        """Flat, secret-free parameters for MLflow: the effective config with the URL masked."""
        flat: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), inner)
            else:
                flat[prefix] = value

        data = self.model_dump(mode="json")
        data["database"]["url"] = self.database.safe_url()
        walk("", data)
        return {key: str(value)[:500] for key, value in flat.items()}


def _resolve_relative(uri: str) -> str:
    """Make ``sqlite:///relative`` and plain relative paths project-relative so cwd never matters."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str((PROJECT_ROOT / uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not Path(uri).is_absolute():
        return str((PROJECT_ROOT / uri).resolve())
    return uri


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load YAML (``path`` > ``$SEGMENTATION_CONFIG`` > configs/default.yaml), then env overrides."""
    chosen = Path(path or os.environ.get(ENV_CONFIG) or DEFAULT_CONFIG)
    if not chosen.is_absolute() and not chosen.exists():
        chosen = PROJECT_ROOT / chosen
    if not chosen.exists():
        raise ConfigError(f"config file not found: {chosen}")
    try:
        raw = yaml.safe_load(chosen.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{chosen}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{chosen}: expected a mapping at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    if os.environ.get(ENV_DATABASE_URL):
        raw.setdefault("database", {})["url"] = os.environ[ENV_DATABASE_URL]
    if os.environ.get(ENV_MLFLOW_URI):
        raw.setdefault("mlflow", {})["tracking_uri"] = os.environ[ENV_MLFLOW_URI]
    if str(raw.get("mlflow", {}).get("tracking_uri", "")).startswith(("http://", "https://")):
        # a tracking server stores artifacts itself; a local path would bypass it
        raw["mlflow"].pop("artifact_location", None)
    if os.environ.get(ENV_DATA_DIR):
        raw["data_dir"] = os.environ[ENV_DATA_DIR]
    if os.environ.get(ENV_ENGINE):
        raw["engine"] = os.environ[ENV_ENGINE]
    if os.environ.get(ENV_SPARK_MASTER):
        raw.setdefault("spark", {})["master"] = os.environ[ENV_SPARK_MASTER]
    try:
        config = PipelineConfig.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError names every failing field
        raise ConfigError(f"{chosen}: invalid configuration:\n{exc}") from exc
    mlflow_cfg = config.mlflow.model_copy(update={"tracking_uri": _resolve_relative(config.mlflow.tracking_uri)})
    if mlflow_cfg.artifact_location:
        mlflow_cfg = mlflow_cfg.model_copy(update={"artifact_location": _resolve_relative(mlflow_cfg.artifact_location)})
    return config.model_copy(update={"mlflow": mlflow_cfg})
