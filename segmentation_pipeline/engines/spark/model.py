"""MLlib training: log1p (SQL) -> VectorAssembler -> StandardScaler(withMean) -> PCA -> KMeans.

The same stages as :func:`segmentation_pipeline.core.features.build_preprocessor` plus
:func:`~segmentation_pipeline.core.modeling.fit_kmeans`, fitted on the non-outlier rows and
applied to every clean row:

* log1p is a ``SQLTransformer`` stage, so the fitted :class:`~pyspark.ml.PipelineModel` is
  self-contained (raw feature columns in, segment out);
* PCA keeps ``transform.pca_components`` components (int), or the fewest reaching the variance
  target (float: PCA is fitted with every component first and ``explainedVariance`` read, with
  sklearn's rule "first k whose cumulative ratio exceeds the target"), or none (null);
* the k sweep fits MLlib KMeans (``k-means||``) per candidate on a seeded sample of at most
  ``k_selection.sweep_max_rows`` rows; inertia is ``summary.trainingCost``; silhouette,
  Davies-Bouldin and Calinski-Harabasz are computed by :func:`core.modeling.cluster_scores` on one
  seeded sample of ``k_selection.silhouette_sample`` rows collected to the driver (Euclidean, the
  very definition the local engine's k rule was tuned on), and ``ClusteringEvaluator``'s
  silhouette on the same rows is recorded as ``silhouette_spark`` (Spark only offers squared
  Euclidean, which reads systematically higher); the gap, stability, smallest share and BIC come
  from :func:`core.k_evidence.sample_evidence` on that driver sample, and k is chosen by
  :func:`core.k_evidence.choose_from_evidence`, the local engine's rule itself;
* cluster ids are canonical (size desc on the fit rows, then centroid), as in the local engine.

Differences from the local engine: StandardScaler divides by the sample std (n-1) where sklearn
uses the population std; KMeans runs once per fit with k-means|| init (``n_init`` restarts with
seeds ``random_state + i`` are available but not the default).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.k_evidence import choose_from_evidence, combine_evidence, evidence_settings, sample_evidence
from segmentation_pipeline.core.k_selection import METRIC_COLUMNS, KSelection, check_k_against_rows, count_distinct_rows
from segmentation_pipeline.core.modeling import cluster_scores, order_by_size, sample_indices, spread_from_cluster_stats
from segmentation_pipeline.core.naming import profile_columns, profile_from_sums

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.ml import PipelineModel
    from pyspark.ml.clustering import KMeansModel
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

__all__ = [
    "FEATURES_COL",
    "PREDICTION_COL",
    "PROBABILITY_COL",
    "SparkFeatures",
    "SparkKMeans",
    "SparkTraining",
    "assign_segments",
    "compact",
    "eval_sample",
    "fit_features",
    "fit_gmm",
    "fit_kmeans",
    "fit_model",
    "gaussian_log_density",
    "population_sample",
    "profile_segments",
    "quality_metrics",
    "sweep_k",
    "train",
]

FEATURES_COL = "_seg_x"  # the clustering input: PCA (or scaled) vector
PREDICTION_COL = "_seg_pred"  # MLlib's own cluster index
_INPUT = "_seg_in_"
_RAW_VEC = "_seg_raw_vec"
_SCALED = "_seg_scaled"
_HELPERS = (_RAW_VEC, _SCALED, FEATURES_COL, PREDICTION_COL)
#: Below this many rows per partition, KMeans iterations are all scheduling overhead: the cached
#: clustering input is coalesced (a few dense columns: 100k rows are ~3 MB).
ROWS_PER_PARTITION = 100_000


def _F():  # noqa: N802
    from pyspark.sql import functions

    return functions


# --------------------------------------------------------------------------- features


@dataclass
class SparkFeatures:
    """The fitted preprocessing PipelineModel plus what the features asset logs."""

    model: "PipelineModel"  # SQLTransformer(log1p) -> VectorAssembler -> StandardScaler -> [PCA]
    features: list[str]
    log1p: list[str]
    n_components: int | None  # None: no PCA
    explained_variance_ratio: np.ndarray  # of the kept components (or per scaled feature without PCA)
    explained_variance_ratio_all: np.ndarray  # every component of the full PCA fit
    component_names: list[str]
    loadings: pd.DataFrame  # features x components
    mean: np.ndarray  # StandardScaler mean, on the log1p scale
    std: np.ndarray  # StandardScaler std (sample std, n-1)
    components: np.ndarray | None  # (n_components, n_features), like sklearn's components_
    n_fit: int

    def transform(self, frame: "DataFrame", keep_helpers: bool = False) -> "DataFrame":
        """``frame`` plus :data:`FEATURES_COL`; the intermediate columns are dropped."""
        out = self.model.transform(frame)
        drop = [f"{_INPUT}{f}" for f in self.features] + [c for c in (_RAW_VEC, _SCALED) if c in out.columns]
        return out if keep_helpers else out.drop(*drop)


def _pca_target(value: int | float | None, n_features: int) -> tuple[str, float | int | None]:
    """('none'|'count'|'variance', number) from the config value; sklearn's meaning of 1.0."""
    if value is None:
        return "none", None
    if isinstance(value, float) and not value.is_integer():
        return "variance", value
    count = int(value)
    if isinstance(value, float) and count == 1:
        return "count", n_features  # 1.0: all the variance = all components
    if not 1 <= count <= n_features:
        raise ValueError(f"transform.pca_components={value} must be between 1 and the {n_features} features")
    return "count", count


def fit_features(
    clean: "DataFrame", config: PipelineConfig, *, fit_filter: str | None = "NOT is_outlier", n_fit: int | None = None
) -> SparkFeatures:
    """Fit the preprocessing stages on the ``fit_filter`` rows of ``clean`` (default: non-outliers).

    ``n_fit`` (the number of those rows, e.g. from the cleaning report) saves one counting job.
    """
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import PCA, SQLTransformer, StandardScaler, VectorAssembler

    features = list(config.features)
    log_columns = [f for f in features if f in set(config.transform.log1p_columns)]
    unknown = sorted(set(config.transform.log1p_columns) - set(features))
    if unknown:
        raise ValueError(f"transform.log1p names columns that are not features: {unknown}")
    missing = [f for f in features if f not in clean.columns]
    if missing:
        raise ValueError(f"feature columns missing from the cleaned frame: {missing}")
    expressions = ", ".join(
        (f"log1p(`{f}`)" if f in log_columns else f"CAST(`{f}` AS DOUBLE)") + f" AS `{_INPUT}{f}`" for f in features
    )
    mode, target = _pca_target(config.transform.pca_components, len(features))
    stages = [
        SQLTransformer(statement=f"SELECT *, {expressions} FROM __THIS__"),
        VectorAssembler(inputCols=[f"{_INPUT}{f}" for f in features], outputCol=_RAW_VEC, handleInvalid="error"),
        StandardScaler(
            inputCol=_RAW_VEC, outputCol=_SCALED if mode != "none" else FEATURES_COL, withMean=True, withStd=True
        ),
    ]
    fit_rows = clean.where(fit_filter) if fit_filter and "is_outlier" in clean.columns else clean
    scaling = Pipeline(stages=stages).fit(fit_rows)
    scaler = scaling.stages[-1]
    mean = np.asarray(scaler.mean.toArray(), dtype=np.float64)
    std = np.asarray(scaler.std.toArray(), dtype=np.float64)
    if mode == "none":
        scaled = scaling.transform(fit_rows).select(FEATURES_COL)
        variances = np.asarray(
            scaled.select(_vector_variance(FEATURES_COL, len(features))).first()[0], dtype=np.float64
        )
        n_fit = int(n_fit if n_fit is not None else scaled.count())
        total = variances.sum()
        ratio = variances / total if total > 0 else np.zeros_like(variances)
        return SparkFeatures(
            model=scaling, features=features, log1p=log_columns, n_components=None,
            explained_variance_ratio=ratio, explained_variance_ratio_all=ratio, component_names=list(features),
            loadings=pd.DataFrame(np.eye(len(features)), index=features, columns=features),
            mean=mean, std=std, components=None, n_fit=n_fit,
        )
    scaled = scaling.transform(fit_rows).select(_SCALED)
    full = PCA(k=len(features), inputCol=_SCALED, outputCol=FEATURES_COL).fit(scaled)
    ratio_all = np.asarray(full.explainedVariance.toArray(), dtype=np.float64)
    if mode == "variance":
        # sklearn: the first k whose cumulative explained variance ratio exceeds the target
        k = int(min(np.searchsorted(np.cumsum(ratio_all), float(target), side="right") + 1, len(features)))
    else:
        k = int(target)
    pca = full if k == len(features) else PCA(k=k, inputCol=_SCALED, outputCol=FEATURES_COL).fit(scaled)
    pc = np.asarray(pca.pc.toArray(), dtype=np.float64)  # (n_features, k)
    names = [f"pca{i}" for i in range(k)]
    n_fit = int(n_fit if n_fit is not None else scaled.count())
    model = PipelineModel(stages=[*scaling.stages, pca])
    return SparkFeatures(
        model=model, features=features, log1p=log_columns, n_components=k,
        explained_variance_ratio=ratio_all[:k], explained_variance_ratio_all=ratio_all, component_names=names,
        loadings=pd.DataFrame(pc, index=features, columns=names),
        mean=mean, std=std, components=pc.T.copy(), n_fit=n_fit,
    )


def _vector_variance(column: str, width: int) -> Any:
    from pyspark.ml.functions import vector_to_array

    F = _F()
    values = vector_to_array(F.col(column))
    return F.array(*[F.var_pop(F.element_at(values, i + 1)) for i in range(width)])


# --------------------------------------------------------------------------- KMeans


@dataclass
class SparkKMeans:
    """A fitted MLlib clustering (``model.algorithm``: KMeans, or a Gaussian mixture) with canonical ids."""

    model: Any  # KMeansModel | GaussianMixtureModel; featuresCol FEATURES_COL, predictionCol PREDICTION_COL
    k: int
    centers: np.ndarray  # canonical order (k, n_components); a mixture's means
    sizes: np.ndarray  # fit rows per canonical cluster
    spark_to_canonical: np.ndarray  # mapping[mllib_label] = canonical id
    inertia: float  # NaN for a mixture
    n_iter: int
    algorithm: str = "kmeans"
    weights: np.ndarray | None = None  # gmm: mixing weights, canonical order
    covariances: np.ndarray | None = None  # gmm: (k, d, d), canonical order

    def predict_numpy(self, X: np.ndarray) -> np.ndarray:
        """Canonical labels of driver-side rows, as MLlib assigns them: nearest centre, or for a
        mixture the highest weighted log density (MLlib's and scikit-learn's argmax posterior)."""
        if self.algorithm != "gmm":
            return _nearest_numpy(X, self.centers)
        assert self.weights is not None and self.covariances is not None
        return gaussian_log_density(np.asarray(X, dtype=np.float64), self.weights, self.centers, self.covariances).argmax(
            axis=1
        )


def gaussian_log_density(X: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray) -> np.ndarray:
    """``log w_j + log N(x | mean_j, cov_j)`` per row and component (full covariances)."""
    from scipy.stats import multivariate_normal

    return np.column_stack([
        np.log(w) + multivariate_normal(mean=m, cov=c, allow_singular=True).logpdf(X)
        for w, m, c in zip(weights, means, covariances, strict=True)
    ]).reshape(len(X), len(weights))


def _kmeans(k: int, seed: int, max_iter: int) -> Any:
    from pyspark.ml.clustering import KMeans

    return KMeans(
        k=k, seed=seed, maxIter=max_iter, initMode="k-means||", featuresCol=FEATURES_COL, predictionCol=PREDICTION_COL
    )


def _fit_best(rows: "DataFrame", k: int, seed: int, max_iter: int, n_init: int) -> "KMeansModel":
    best = None
    for attempt in range(max(1, n_init)):
        model = _kmeans(k, seed + attempt, max_iter).fit(rows)
        if best is None or model.summary.trainingCost < best.summary.trainingCost:
            best = model
    assert best is not None
    if len(best.clusterCenters()) < k:
        raise ValueError(
            f"k={k} needs at least {k} distinct customers; MLlib KMeans found only "
            f"{len(best.clusterCenters())} distinct centres after cleaning"
        )
    return best


def fit_kmeans(X_fit: "DataFrame", k: int, config: PipelineConfig, *, n_init: int = 1) -> SparkKMeans:
    """MLlib KMeans (k-means||, ``model.random_state``, ``model.max_iter``) with canonical ids."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    model = _fit_best(X_fit, k, config.model.random_state, config.model.max_iter, n_init)
    centers = np.asarray(model.clusterCenters(), dtype=np.float64)
    sizes = np.asarray(model.summary.clusterSizes, dtype=np.int64)
    order = order_by_size(centers, sizes)  # core.modeling's canonical rule, from MLlib's sizes
    mapping = np.empty(k, dtype=np.int64)
    mapping[order] = np.arange(k)
    return SparkKMeans(
        model=model, k=k, centers=centers[order], sizes=sizes[order], spark_to_canonical=mapping,
        inertia=float(model.summary.trainingCost), n_iter=int(model.summary.numIter),
    )


#: MLlib's per-row class probabilities of a mixture; dropped wherever the prediction is read.
PROBABILITY_COL = "_probability"


def fit_gmm(X_fit: "DataFrame", k: int, config: PipelineConfig, *, n_init: int = 1) -> SparkKMeans:
    """MLlib GaussianMixture (full covariance, ``model.random_state``, ``model.max_iter``; the best
    log-likelihood of ``n_init`` seeds) with canonical ids from its means and cluster sizes."""
    from pyspark.ml.clustering import GaussianMixture

    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    best = None
    for attempt in range(max(1, n_init)):
        model = GaussianMixture(
            k=k, seed=config.model.random_state + attempt, maxIter=config.model.max_iter, featuresCol=FEATURES_COL,
            predictionCol=PREDICTION_COL, probabilityCol=PROBABILITY_COL,
        ).fit(X_fit)
        if best is None or model.summary.logLikelihood > best.summary.logLikelihood:
            best = model
    assert best is not None
    gaussians = best.gaussiansDF.collect()
    means = np.array([row["mean"].toArray() for row in gaussians], dtype=np.float64)
    covariances = np.array([row["cov"].toArray() for row in gaussians], dtype=np.float64)
    weights = np.asarray(best.weights, dtype=np.float64)
    sizes = np.asarray(best.summary.clusterSizes, dtype=np.int64)
    order = order_by_size(means, sizes)
    mapping = np.empty(k, dtype=np.int64)
    mapping[order] = np.arange(k)
    return SparkKMeans(
        model=best, k=k, centers=means[order], sizes=sizes[order], spark_to_canonical=mapping,
        inertia=float("nan"), n_iter=int(best.summary.numIter), algorithm="gmm", weights=weights[order],
        covariances=covariances[order],
    )


def fit_model(X_fit: "DataFrame", k: int, config: PipelineConfig, *, n_init: int = 1) -> SparkKMeans:
    """The final model of ``config.model.algorithm`` (the Spark engine offers kmeans and gmm)."""
    if config.model.algorithm == "gmm":
        return fit_gmm(X_fit, k, config, n_init=n_init)
    return fit_kmeans(X_fit, k, config, n_init=n_init)


def compact(frame: "DataFrame", rows: int) -> "DataFrame":
    """Fewer partitions for small inputs (never more than it has): see ROWS_PER_PARTITION."""
    wanted = max(1, math.ceil(rows / ROWS_PER_PARTITION))
    current = frame.rdd.getNumPartitions()
    return frame.coalesce(wanted) if wanted < current else frame


def _nearest_numpy(X: np.ndarray, centers: np.ndarray) -> np.ndarray:
    distances = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    return distances.argmin(axis=1)


def _sample_matrix(X: "DataFrame", n: int, size: int, seed: int) -> np.ndarray:
    """A seeded sample of about ``size`` rows of FEATURES_COL as a numpy matrix (exactly ``size``
    when there are more rows): Bernoulli-sample a little more in Spark, trim with numpy."""
    fraction = min(1.0, 1.2 * size / max(n, 1))
    rows = (X.sample(False, fraction, seed) if fraction < 1 else X).select(FEATURES_COL).collect()
    matrix = np.asarray([row[0].toArray() for row in rows], dtype=np.float64)
    if len(matrix) > size:
        matrix = matrix[sample_indices(len(matrix), size, seed)]
    return matrix


@dataclass
class _Sample:
    X: np.ndarray
    frame: Any = None  # the same rows as a Spark DataFrame (for ClusteringEvaluator)


def _silhouette_sample(X: "DataFrame", n: int, config: PipelineConfig) -> _Sample:
    from pyspark.ml.functions import array_to_vector

    matrix = _sample_matrix(X, n, config.k_selection.silhouette_sample, config.model.random_state)
    # the same rows back in Spark for ClusteringEvaluator; via Arrow, so no Python worker is involved
    rows = pd.DataFrame({"v": [row.tolist() for row in matrix]})
    frame = X.sparkSession.createDataFrame(rows, "v array<double>").select(
        array_to_vector(_F().col("v")).alias(FEATURES_COL)
    )
    return _Sample(matrix, frame)


def sweep_k(
    X: "DataFrame",
    config: PipelineConfig,
    *,
    n_rows: int | None = None,
    progress: Callable[[int, dict], None] | None = None,
    n_init: int = 1,
    sample: _Sample | None = None,
    spark_silhouette: bool = True,
) -> KSelection:
    """Sweep ``config.k_candidates`` on the rows of ``X`` (column FEATURES_COL) and choose k.

    Same output as :func:`core.k_evidence.select_k`: the metrics frame (METRIC_COLUMNS plus
    ``silhouette_spark``, attrs ``n_rows``/``sweep_rows``/``silhouette_sample_size``), the evidence
    table and structure, k chosen by :func:`choose_from_evidence`, a fixed k reported as "fixed by config". ``spark_silhouette=False`` skips
    ClusteringEvaluator (``silhouette_spark`` is then NaN; it never influences k).
    """
    from pyspark import StorageLevel
    from pyspark.ml.evaluation import ClusteringEvaluator

    settings = config.k_selection
    seed = config.model.random_state
    n = int(n_rows if n_rows is not None else X.count())
    if n < 2:
        raise ValueError(f"need at least 2 customers to cluster; X has {n} row(s)")
    ks = [int(k) for k in config.k_candidates]
    sample = sample or _silhouette_sample(X, n, config)
    if len(sample.X) >= n:  # the driver sample is every row: the distinct count is exact and cheap
        check_k_against_rows(config.k_range, config.k, count_distinct_rows(sample.X, max(ks) + 1))
    fraction = min(1.0, settings.sweep_max_rows / n)
    X_fit = (X.sample(False, fraction, seed + 1) if fraction < 1 else X).select(FEATURES_COL)
    X_fit = compact(X_fit, min(n, settings.sweep_max_rows)).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        sweep_rows = X_fit.count()
        evaluator = ClusteringEvaluator(
            featuresCol=FEATURES_COL, predictionCol=PREDICTION_COL, metricName="silhouette",
            distanceMeasure="squaredEuclidean",
        )
        rows: list[dict[str, float]] = []
        for k in ks:
            model = _fit_best(X_fit, k, seed, config.model.max_iter, n_init)
            centers = np.asarray(model.clusterCenters(), dtype=np.float64)
            labels = _nearest_numpy(sample.X, centers)
            scores = cluster_scores(sample.X, labels)
            silhouette_sq = float("nan")
            if spark_silhouette and len(np.unique(labels)) >= 2:
                silhouette_sq = float(evaluator.evaluate(model.transform(sample.frame)))
            row = {"k": k, "inertia": float(model.summary.trainingCost), **scores, "silhouette_spark": silhouette_sq}
            rows.append(row)
            if progress is not None:
                progress(k, dict(row))
    finally:
        X_fit.unpersist()
    metrics = pd.DataFrame(rows, columns=[*METRIC_COLUMNS, "silhouette_spark"])
    metrics.attrs.update({"n_rows": n, "sweep_rows": int(sweep_rows), "silhouette_sample_size": len(sample.X)})
    # the rest of the evidence (gap, stability, smallest share, BIC) and the rule itself: the core's,
    # on the seeded driver sample already collected for the silhouette
    evidence_config = evidence_settings(config)
    S = sample.X[sample_indices(len(sample.X), evidence_config.eval_rows, (seed, 3))]
    evidence = combine_evidence(metrics, sample_evidence(S, ks, evidence_config))
    return choose_from_evidence(metrics, evidence, config)


# --------------------------------------------------------------------------- quality, assignment


def quality_metrics(
    X_fit: "DataFrame", kmeans: SparkKMeans, config: PipelineConfig, *, sample: _Sample | None = None,
    n_rows: int | None = None,
) -> dict[str, float]:
    """:func:`core.modeling.quality_metrics`' record plus ``inertia``/``n_iter`` (as the local model
    step adds them): silhouette on the seeded driver sample; Davies-Bouldin and Calinski-Harabasz
    over every fit row, from per-cluster sums aggregated in two Spark passes and reduced by
    :func:`core.modeling.spread_from_cluster_stats`."""
    from pyspark.ml.functions import vector_to_array

    F = _F()
    n = int(n_rows if n_rows is not None else X_fit.count())
    sample = sample or _silhouette_sample(X_fit, n, config)
    labels = kmeans.predict_numpy(sample.X)
    silhouette = cluster_scores(sample.X, labels)["silhouette"]
    d = kmeans.centers.shape[1]
    mapping = F.array(*[F.lit(int(v)) for v in kmeans.spark_to_canonical])
    assigned = kmeans.model.transform(X_fit).select(
        F.element_at(mapping, F.col(PREDICTION_COL) + 1).alias("c"), vector_to_array(F.col(FEATURES_COL)).alias("v")
    )
    coords = [F.element_at(F.col("v"), j + 1) for j in range(d)]
    first = sorted(
        assigned.groupBy("c").agg(F.count(F.lit(1)).alias("n"), *[F.avg(coords[j]).alias(f"m{j}") for j in range(d)])
        .collect(),
        key=lambda r: int(r["c"]),
    )
    ids = np.array([int(r["c"]) for r in first], dtype=np.int64)
    counts = np.array([int(r["n"]) for r in first], dtype=np.float64)
    means = np.array([[float(r[f"m{j}"]) for j in range(d)] for r in first], dtype=np.float64).reshape(len(first), d)
    spread = {"davies_bouldin": float("nan"), "calinski_harabasz": float("nan")}
    if 2 <= len(ids) <= n - 1:
        table = F.array(*[F.array(*[F.lit(float(v)) for v in means[i]]) for i in range(len(ids))])
        position = F.array_position(F.array(*[F.lit(int(i)) for i in ids]), F.col("c")).cast("int")
        centre = F.element_at(table, position)
        squared = sum(((coords[j] - F.element_at(centre, j + 1)) ** 2 for j in range(d)), F.lit(0.0))
        second = {
            int(r["c"]): (float(r["sq"]), float(r["dist"]))
            for r in assigned.groupBy("c").agg(F.sum(squared).alias("sq"), F.sum(F.sqrt(squared)).alias("dist"))
            .collect()
        }
        intra_sq = np.array([second[int(i)][0] for i in ids])
        intra_dist = np.array([second[int(i)][1] for i in ids])
        spread = spread_from_cluster_stats(counts, means, intra_sq, intra_dist)
    out = {
        "silhouette": silhouette,
        **spread,
        "silhouette_sample_size": float(len(sample.X)),
        "n_clusters": float(len(ids)),
        "n_iter": float(kmeans.n_iter),
    }
    if kmeans.algorithm != "gmm":  # a mixture has no WCSS of its own
        out["inertia"] = kmeans.inertia
    return out


def assign_segments(
    frame: "DataFrame",
    features: SparkFeatures,
    kmeans: SparkKMeans,
    *,
    label_to_segment: np.ndarray | None = None,
    column: str = "segment_id",
) -> "DataFrame":
    """``frame`` plus ``column``: ``label_to_segment[canonical id]`` (default: the canonical id)."""
    F = _F()
    ids = np.arange(kmeans.k) if label_to_segment is None else np.asarray(label_to_segment)
    if len(ids) != kmeans.k:
        raise ValueError(f"label_to_segment has {len(ids)} entries for k={kmeans.k}")
    per_spark_label = ids[kmeans.spark_to_canonical]
    table = F.array(*[F.lit(int(v)) for v in per_spark_label])
    scored = kmeans.model.transform(features.transform(frame))
    return scored.withColumn(column, F.element_at(table, F.col(PREDICTION_COL) + 1).cast("long")).drop(
        FEATURES_COL, PREDICTION_COL, PROBABILITY_COL
    )


def profile_segments(
    assigned: "DataFrame", features: list[str], value_feature: str | None, column: str = "segment_id"
) -> pd.DataFrame:
    """:func:`core.naming.profile_segments`' record, the per-segment sums aggregated in Spark."""
    F = _F()
    columns = profile_columns(features, value_feature)
    sums = [F.sum(F.col(c).cast("double")).alias(f"s{j}") for j, c in enumerate(columns)]
    rows = sorted(
        assigned.groupBy(F.col(column).alias("segment_id")).agg(F.count(F.lit(1)).alias("count"), *sums).collect(),
        key=lambda r: int(r["segment_id"]),
    )
    if not rows:
        raise ValueError("cannot profile an empty frame")
    return profile_from_sums(
        np.array([int(r["segment_id"]) for r in rows], dtype=np.int64),
        np.array([int(r["count"]) for r in rows], dtype=np.int64),
        np.array([[float(r[f"s{j}"]) for j in range(len(columns))] for r in rows], dtype=np.float64),
        features,
        value_feature,
    )


def population_sample(clean: "DataFrame", columns: list[str], size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of about ``size`` rows as pandas (e.g. the population for naming z-scores)."""
    n = clean.count()
    fraction = min(1.0, size / max(n, 1))
    rows = clean.sample(False, fraction, seed) if fraction < 1 else clean
    return rows.select(*columns).toPandas()


def eval_sample(
    fit_rows: "DataFrame", features: SparkFeatures, config: PipelineConfig
) -> tuple[pd.DataFrame, np.ndarray]:
    """The driver-side evaluation rows: a seeded sample of the fit rows as id + raw features and
    the same rows in feature space (as Spark computed them), large enough for the promotion gate
    and the silhouette sample."""
    from pyspark.ml.functions import vector_to_array

    size = max(config.promotion.sample, config.k_selection.silhouette_sample)
    fraction = min(1.0, size / max(features.n_fit, 1))
    rows = fit_rows.sample(False, fraction, config.model.random_state) if fraction < 1 else fit_rows
    picked = features.transform(rows).select(
        config.source.id_column, *config.features, vector_to_array(FEATURES_COL).alias("_x")
    ).toPandas()
    dtype = np.float32 if config.transform.float32 else np.float64
    X = np.asarray(picked.pop("_x").tolist(), dtype=dtype).reshape(len(picked), -1)
    return picked, X


# --------------------------------------------------------------------------- everything


@dataclass
class SparkTraining:
    features: SparkFeatures
    selection: KSelection
    kmeans: SparkKMeans
    metrics: dict[str, float]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.kmeans.k

    @property
    def pipeline_model(self) -> "PipelineModel":
        """Spark's own end-to-end model: raw feature columns in, MLlib label in PREDICTION_COL."""
        from pyspark.ml import PipelineModel

        return PipelineModel(stages=[*self.features.model.stages, self.kmeans.model])

    def assign(self, frame: "DataFrame", label_to_segment: np.ndarray | None = None) -> "DataFrame":
        return assign_segments(frame, self.features, self.kmeans, label_to_segment=label_to_segment)


def train(
    clean: "DataFrame",
    config: PipelineConfig,
    *,
    progress: Callable[[int, dict], None] | None = None,
    n_init: int = 1,
    n_fit: int | None = None,
    spark_silhouette: bool = True,
) -> SparkTraining:
    """Features on the non-outliers, the k sweep, the final KMeans and its quality metrics.

    ``n_fit``: the number of non-outlier rows if known (``n_clean - n_outliers`` from the cleaning
    report under ``action: flag``); saves two counting jobs.
    """
    from pyspark import StorageLevel

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    features = fit_features(clean, config, n_fit=n_fit)
    seconds["features"] = time.perf_counter() - started
    fit_rows = clean.where("NOT is_outlier") if "is_outlier" in clean.columns else clean
    X = compact(features.transform(fit_rows).select(FEATURES_COL), features.n_fit)
    X = X.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        n = features.n_fit
        started = time.perf_counter()
        sample = _silhouette_sample(X, n, config)
        selection = sweep_k(
            X, config, n_rows=n, progress=progress, n_init=n_init, sample=sample, spark_silhouette=spark_silhouette
        )
        seconds["sweep"] = time.perf_counter() - started
        started = time.perf_counter()
        kmeans = fit_model(X, selection.k, config, n_init=n_init)
        seconds["fit"] = time.perf_counter() - started
        started = time.perf_counter()
        metrics = quality_metrics(X, kmeans, config, sample=sample, n_rows=n)
        seconds["metrics"] = time.perf_counter() - started
    finally:
        X.unpersist()
    log.info(
        "spark training: k=%d (%s) in %s", kmeans.k, selection.reason, {k: round(v, 1) for k, v in seconds.items()}
    )
    return SparkTraining(features=features, selection=selection, kmeans=kmeans, metrics=metrics, seconds=seconds)
