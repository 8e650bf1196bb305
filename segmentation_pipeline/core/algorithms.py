"""The clustering algorithms a segment model can be fitted with: one registry, name -> builder.

Why one registry: config validation (``model.algorithm``), the local engine's final fit and the
promotion gate's stability refits must agree on which names exist and what each one builds; the
allowed list in an error message is read from here, never typed twice.

* ``kmeans`` (default): Lloyd KMeans, k-means++ init.
* ``gmm``: a full-covariance Gaussian mixture; rows are assigned by its own ``predict`` (highest
  posterior), not by the nearest mean, so the served model carries the fitted mixture.
* ``minibatch_kmeans``: KMeans on mini-batches, for tables too large for Lloyd's full passes.
* ``bisecting_kmeans``: divisive KMeans; it assigns by walking its bisection tree, which the
  served model carries too.

Every algorithm hands on centres for the canonical ids and the champion matching: the cluster
centres, for ``gmm`` the component means (``means_``). scikit-learn is imported inside the builders
so that importing this module (config validation does) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from sklearn.cluster import BisectingKMeans, KMeans, MiniBatchKMeans
    from sklearn.mixture import GaussianMixture

__all__ = [
    "ALGORITHMS",
    "ALGORITHM_NAMES",
    "DEFAULT_ALGORITHM",
    "Algorithm",
    "FitSettings",
    "algorithm_of",
    "build_estimator",
    "check_algorithm",
    "cluster_centres",
]

DEFAULT_ALGORITHM = "kmeans"


@dataclass(frozen=True)
class FitSettings:
    """The ``model`` section's knobs every builder reads (restarts, iterations, seed)."""

    n_init: int = 10
    max_iter: int = 300
    random_state: int = 42
    copy_x: bool = True  # (bisecting) KMeans: False lets it centre a throwaway input in place


def _kmeans(k: int, s: FitSettings) -> KMeans:
    from sklearn.cluster import KMeans

    return KMeans(
        n_clusters=k, init="k-means++", algorithm="lloyd", n_init=s.n_init, max_iter=s.max_iter,
        random_state=s.random_state, copy_x=s.copy_x,
    )


def _gmm(k: int, s: FitSettings) -> GaussianMixture:
    from sklearn.mixture import GaussianMixture

    # full covariance: the same model as the evidence's BIC column (core.k_evidence), so the k that
    # BIC chose is the k of the mixture that is served
    return GaussianMixture(
        n_components=k, covariance_type="full", n_init=s.n_init, max_iter=s.max_iter, random_state=s.random_state,
    )


def _minibatch_kmeans(k: int, s: FitSettings) -> MiniBatchKMeans:
    from sklearn.cluster import MiniBatchKMeans

    return MiniBatchKMeans(
        n_clusters=k, init="k-means++", n_init=s.n_init, max_iter=s.max_iter, batch_size=4096,
        random_state=s.random_state,
    )


def _bisecting_kmeans(k: int, s: FitSettings) -> BisectingKMeans:
    from sklearn.cluster import BisectingKMeans

    return BisectingKMeans(
        n_clusters=k, init="k-means++", n_init=s.n_init, max_iter=s.max_iter, random_state=s.random_state,
        copy_x=s.copy_x,  # default strategy: split the cluster with the biggest inertia
    )


@dataclass(frozen=True)
class Algorithm:
    """One entry of the registry: what it builds and the estimator class it builds."""

    name: str
    estimator: str  # scikit-learn class name, to tell a fitted model's algorithm back
    build: Callable[[int, FitSettings], Any]
    summary: str


ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm("kmeans", "KMeans", _kmeans, "Lloyd KMeans (k-means++ init)"),
        Algorithm("gmm", "GaussianMixture", _gmm, "Gaussian mixture, full covariance; k by BIC when not fixed"),
        Algorithm("minibatch_kmeans", "MiniBatchKMeans", _minibatch_kmeans, "mini-batch KMeans, for large tables"),
        Algorithm("bisecting_kmeans", "BisectingKMeans", _bisecting_kmeans, "divisive (bisecting) KMeans"),
    )
}
ALGORITHM_NAMES: tuple[str, ...] = tuple(ALGORITHMS)


def check_algorithm(name: object) -> str:
    """``name`` if it is a known algorithm; else a ValueError naming the value and the allowed names."""
    if not isinstance(name, str) or name not in ALGORITHMS:
        raise ValueError(f"model.algorithm {name!r} is not known; allowed: {', '.join(ALGORITHM_NAMES)}")
    return name


def build_estimator(name: str, k: int, settings: FitSettings) -> Any:
    """An unfitted scikit-learn estimator of algorithm ``name`` with ``k`` clusters."""
    return ALGORITHMS[check_algorithm(name)].build(k, settings)


def algorithm_of(estimator: object) -> str:
    """The registry name of a fitted (or unfitted) estimator, from its class."""
    cls = type(estimator).__name__
    for algorithm in ALGORITHMS.values():
        if algorithm.estimator == cls:
            return algorithm.name
    raise ValueError(f"{cls} is not one of the registered algorithms ({', '.join(ALGORITHM_NAMES)})")


def cluster_centres(estimator: Any) -> np.ndarray:
    """Per raw label, the centre in feature space: ``cluster_centers_``, or a mixture's ``means_``."""
    centres = getattr(estimator, "cluster_centers_", None)
    if centres is None:
        centres = estimator.means_
    return np.asarray(centres, dtype=np.float64)
