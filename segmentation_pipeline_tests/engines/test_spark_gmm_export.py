"""The Spark engine's mixture export without a JVM: MLlib's numbers (weights, means, covariances)
copied into a scikit-learn GaussianMixture predict what the driver-side rule predicts, and what a
mixture fitted with those numbers predicts."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import make_blobs
from sklearn.mixture import GaussianMixture

from segmentation_pipeline.config import load_config
from segmentation_pipeline.engines import ENGINE_ALGORITHMS
from segmentation_pipeline.engines.spark.export import to_sklearn_gmm, to_sklearn_model
from segmentation_pipeline.engines.spark.model import SparkKMeans


def _spark_like(fitted: GaussianMixture) -> SparkKMeans:
    k = len(fitted.weights_)
    return SparkKMeans(
        model=None, k=k, centers=fitted.means_, sizes=np.full(k, 10), spark_to_canonical=np.arange(k),
        inertia=float("nan"), n_iter=3, algorithm="gmm", weights=fitted.weights_, covariances=fitted.covariances_,
    )


def test_exported_mixture_predicts_like_the_fitted_one_and_the_driver_rule() -> None:
    X, _ = make_blobs(n_samples=[400, 150, 60], n_features=3, cluster_std=[1.0, 2.5, 0.4], random_state=4)
    fitted = GaussianMixture(3, covariance_type="full", random_state=0).fit(X)
    spark = _spark_like(fitted)
    exported = to_sklearn_gmm(spark, load_config("configs/default.yaml"))
    probe = np.vstack([X, np.random.default_rng(0).uniform(X.min(0) - 5, X.max(0) + 5, size=(300, 3))])
    expected = fitted.predict(probe)
    np.testing.assert_array_equal(exported.predict(probe), expected)
    np.testing.assert_array_equal(exported.predict(probe.astype(np.float32)), expected)
    np.testing.assert_array_equal(spark.predict_numpy(probe), expected)
    assert isinstance(to_sklearn_model(spark, load_config("configs/default.yaml")), GaussianMixture)


def test_spark_offers_kmeans_and_gmm_only() -> None:
    assert ENGINE_ALGORITHMS["spark"] == ("kmeans", "gmm")
