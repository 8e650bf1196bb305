"""Fitted Spark stages -> the very sklearn Pipeline the local engine registers.

The registered model, the ``score`` job, online serving and drift all use
:class:`~segmentation_pipeline.core.assigner.SegmentAssigner` over an sklearn Pipeline
``preprocess -> kmeans``. A Spark-trained model is exported into that same shape, built by the
local engine's own :func:`~segmentation_pipeline.core.features.build_preprocessor` (steps
``log1p`` -> ``scale`` -> ``pca`` -> ``float32``) with the fitted numbers copied over:

* ``scale``: ``mean_`` and ``scale_`` are Spark's StandardScaler mean and std (std 0 -> scale 1,
  which gives 0 like Spark);
* ``pca``: ``components_`` is Spark's principal-component matrix (transposed) and ``mean_`` is 0,
  because Spark's PCA does not centre (the scaler already did);
* ``kmeans``: a real sklearn KMeans whose ``cluster_centers_`` are Spark's centres in canonical
  order, so its labels are already the canonical ids;
* ``gmm`` (``model.algorithm: gmm``): a real sklearn GaussianMixture with MLlib's weights, means
  and covariances in canonical order; both predict the argmax of the weighted log density.

Only numpy/sklearn objects are pickled, so the model unpickles without this package (as the
local one does). Spark computes in float64; with ``transform.float32`` the exported pipeline
casts to float32 before KMeans like the local one, which can only flip points lying within
float32 rounding of a cluster boundary.

``kmeans.labels_`` cannot hold one label per Spark fit row (millions, and they never leave the
cluster); it holds a surrogate with strictly decreasing counts per canonical id, so
:func:`core.modeling.canonical_relabel` of the exported model is the identity, as it is for a
model from :func:`core.modeling.fit_kmeans`. True sizes are in ``SparkKMeans.sizes``.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.mixture import GaussianMixture
from sklearn.pipeline import Pipeline

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.features import build_preprocessor
from segmentation_pipeline.core.modeling import build_model_pipeline, surrogate_labels
from segmentation_pipeline.engines.spark.model import SparkFeatures, SparkKMeans, SparkTraining

__all__ = [
    "to_segment_assigner",
    "to_sklearn_gmm",
    "to_sklearn_kmeans",
    "to_sklearn_model",
    "to_sklearn_pipeline",
    "to_sklearn_preprocessor",
]


def to_sklearn_preprocessor(features: SparkFeatures, config: PipelineConfig) -> Pipeline:
    """The local engine's preprocessor with Spark's fitted scaler and PCA numbers."""
    if list(features.features) != list(config.features):
        raise ValueError(f"Spark features {features.features} do not match config.features {config.features}")
    # the columns the fitted stages log: the run's resolved choice, whatever the config says
    transform = config.transform.model_copy(update={"pca_components": features.n_components, "log1p": list(features.log1p)})
    preprocessor = build_preprocessor(config.model_copy(update={"transform": transform}))
    n_features = len(features.features)
    # Fit once on throwaway positive rows so every step has its sklearn fitted state (feature
    # names, n_features_in_); the numbers that matter are overwritten below.
    rows = max(n_features, features.n_components or 0) + 2
    dummy = pd.DataFrame(
        np.random.default_rng(0).uniform(1.0, 2.0, size=(rows, n_features)), columns=features.features
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        preprocessor.fit(dummy)
    std = np.asarray(features.std, dtype=np.float64)
    scaler = preprocessor.named_steps["scale"]
    scaler.mean_ = np.asarray(features.mean, dtype=np.float64).copy()
    scaler.var_ = std**2
    scaler.scale_ = np.where(std > 0, std, 1.0)
    scaler.n_samples_seen_ = int(features.n_fit)
    pca = preprocessor.named_steps.get("pca")
    if pca is not None:
        if features.components is None:
            raise ValueError("Spark features have no PCA components but the preprocessor has a PCA step")
        k = int(features.n_components or 0)
        ratio_all = np.asarray(features.explained_variance_ratio_all, dtype=np.float64)
        total = float((std > 0).sum())  # standardised features: variance 1 each (0 when constant)
        variance_all = ratio_all * total
        pca.components_ = np.asarray(features.components, dtype=np.float64).copy()
        pca.mean_ = np.zeros(n_features)
        pca.n_components_ = k
        pca.explained_variance_ratio_ = ratio_all[:k].copy()
        pca.explained_variance_ = variance_all[:k].copy()
        pca.singular_values_ = np.sqrt(variance_all[:k] * max(features.n_fit - 1, 1))
        pca.noise_variance_ = float(variance_all[k:].mean()) if k < len(variance_all) else 0.0
        pca.n_samples_ = int(features.n_fit)
    return preprocessor


def to_sklearn_kmeans(kmeans: SparkKMeans, config: PipelineConfig) -> KMeans:
    """A fitted sklearn KMeans predicting with Spark's centres (canonical order)."""
    dtype = np.float32 if config.transform.float32 else np.float64
    centers = np.asarray(kmeans.centers, dtype=dtype)
    k = len(centers)
    # Fitting on the centres themselves, initialised at the centres, converges in one step to
    # the same centres and gives sklearn every private attribute it needs; the exact values are
    # then copied over (sklearn re-adds a data mean, which can move the last bit).
    model = KMeans(n_clusters=k, init=centers, n_init=1, max_iter=1, random_state=config.model.random_state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(centers)
    model.cluster_centers_ = centers.copy()
    model.labels_ = surrogate_labels(np.arange(k))  # see module docstring
    model.inertia_ = float(kmeans.inertia)
    model.n_iter_ = int(kmeans.n_iter)
    return model


def to_sklearn_gmm(fitted: SparkKMeans, config: PipelineConfig) -> GaussianMixture:
    """A fitted sklearn GaussianMixture with MLlib's weights, means and covariances (canonical order)."""
    assert fitted.weights is not None and fitted.covariances is not None, "not a Spark mixture"
    means = np.asarray(fitted.centers, dtype=np.float64)
    covariances = np.asarray(fitted.covariances, dtype=np.float64)
    k, d = means.shape
    model = GaussianMixture(n_components=k, covariance_type="full", random_state=config.model.random_state)
    chol = []
    for cov in covariances:
        try:
            lower = np.linalg.cholesky(cov)
        except np.linalg.LinAlgError:  # a degenerate component: sklearn's own reg_covar
            lower = np.linalg.cholesky(cov + model.reg_covar * np.eye(d))
        chol.append(np.linalg.solve(lower, np.eye(d)).T)  # sklearn's precisions_cholesky_ for "full"
    model.weights_ = np.asarray(fitted.weights, dtype=np.float64).copy()
    model.means_ = means.copy()
    model.covariances_ = covariances.copy()
    model.precisions_cholesky_ = np.array(chol)
    model.precisions_ = np.array([c @ c.T for c in model.precisions_cholesky_])
    model.converged_ = True
    model.n_iter_ = int(fitted.n_iter)
    model.lower_bound_ = float("nan")
    model.n_features_in_ = d
    return model


def to_sklearn_model(fitted: SparkKMeans, config: PipelineConfig) -> KMeans | GaussianMixture:
    """The served estimator for a Spark fit of either algorithm the engine offers."""
    return to_sklearn_gmm(fitted, config) if fitted.algorithm == "gmm" else to_sklearn_kmeans(fitted, config)


def to_sklearn_pipeline(training: SparkTraining, config: PipelineConfig) -> Pipeline:
    """``Pipeline([("preprocess", ...), (algorithm, ...)])``, as :func:`core.modeling.build_model_pipeline`."""
    return build_model_pipeline(
        to_sklearn_preprocessor(training.features, config), to_sklearn_model(training.kmeans, config)
    )


def to_segment_assigner(
    training: SparkTraining,
    config: PipelineConfig,
    *,
    segment_names: dict[int, str] | None = None,
    label_to_segment: np.ndarray | None = None,
    centroids_original: np.ndarray | None = None,
    metadata: dict[str, str] | None = None,
) -> SegmentAssigner:
    """The scoring contract for a Spark-trained model (defaults: canonical ids, "Segment <i>")."""
    k = training.kmeans.k
    mapping = np.arange(k, dtype=np.int64) if label_to_segment is None else np.asarray(label_to_segment, dtype=np.int64)
    if len(mapping) != k:
        raise ValueError(f"label_to_segment has {len(mapping)} entries for k={k}")
    names = segment_names if segment_names is not None else {int(s): f"Segment {int(s)}" for s in mapping}
    return SegmentAssigner(
        pipeline=to_sklearn_pipeline(training, config),
        features=list(config.features),
        label_to_segment=mapping,
        segment_names={int(s): str(v) for s, v in names.items()},
        centroids_original=centroids_original,
        metadata=dict(metadata or {"next_segment_id": str(int(mapping.max()) + 1), "engine": "spark"}),
    )
