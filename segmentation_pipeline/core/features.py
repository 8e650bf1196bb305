"""Feature matrix for clustering: log1p -> standardise -> (optional) PCA, as one sklearn Pipeline.

Why one Pipeline: the exact same fitted object transforms the training rows, scores new
customers later, and is logged with the model, so train/serve skew is impossible.

Why fit on a mask: outliers are still segmented, but they must not move the scaler's mean/std
or rotate the PCA axes; the preprocessor is fitted on ``fit_mask`` rows and applied to all rows.

The fitted preprocessor only references numpy/sklearn callables, so it unpickles without this
package installed.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from segmentation_pipeline.config import PipelineConfig
from segmentation_pipeline.core.rows import ROW_BLOCK, map_row_blocks
from segmentation_pipeline.core.skew import resolve_log1p

__all__ = ["FeatureMatrix", "build_features", "build_preprocessor", "logged_columns"]


@dataclass
class FeatureMatrix:
    """The clustering input plus everything needed to explain and reproduce it."""

    X: np.ndarray
    fit_mask: np.ndarray
    preprocessor: Pipeline
    component_names: list[str]
    explained_variance_ratio: np.ndarray
    loadings: pd.DataFrame

    @property
    def X_fit(self) -> np.ndarray:
        """Rows the preprocessor (and the model) are fitted on."""
        return self.X[self.fit_mask]


def _pca_n_components(value: int | float | None, n_features: int) -> int | float | None:
    """Translate the config value to sklearn's: 1.0 means 'keep all variance' (all components)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"transform.pca_components must be a number, got {value!r}")
    if isinstance(value, float) and not value.is_integer():
        if not 0 < value < 1:
            raise ValueError(f"transform.pca_components={value} must be a fraction in (0, 1] or an integer")
        return value
    count = int(value)
    if isinstance(value, float) and count == 1:
        return n_features  # 1.0 is the 100% variance target, not "one component"
    if count < 1:
        raise ValueError(f"transform.pca_components={value} must be >= 1")
    if count > n_features:
        raise ValueError(
            f"transform.pca_components={count} exceeds the number of features ({n_features}); "
            "use at most that many components, a variance fraction in (0, 1], or null"
        )
    return count


def build_preprocessor(config: PipelineConfig) -> Pipeline:
    """Unfitted preprocessing Pipeline for a DataFrame holding ``config.features``.

    Steps: ``log1p`` (ColumnTransformer; one entry per feature in config order so the output
    column order equals ``config.features``; columns outside the features are dropped so an id
    column in the frame can never leak into the model), ``scale`` (StandardScaler), ``pca``
    (covariance_eigh: few features, many rows -> one pass over X^T X, exact and deterministic),
    ``float32`` (halves memory and speeds KMeans; cluster assignments are unaffected in practice).
    """
    features = list(config.features)
    transform = config.transform
    n_components = _pca_n_components(transform.pca_components, len(features))
    log_columns = set(transform.log1p_columns)
    unknown = sorted(log_columns - set(features))
    if unknown:
        raise ValueError(f"transform.log1p names columns that are not features: {unknown}")

    columns = ColumnTransformer(
        [
            (
                name,
                FunctionTransformer(np.log1p, feature_names_out="one-to-one")
                if name in log_columns
                else "passthrough",
                [name],
            )
            for name in features
        ],
        remainder="drop",
        verbose_feature_names_out=False,
    )
    # copy=False: the scaler's input is always the ColumnTransformer's fresh output, so scaling it
    # in place is safe and saves a full float64 copy of the rows being fitted or transformed
    steps: list[tuple[str, object]] = [("log1p", columns), ("scale", StandardScaler(copy=False))]
    if n_components is not None:
        steps.append(
            (
                "pca",
                PCA(
                    n_components=n_components,
                    svd_solver="covariance_eigh",
                    random_state=config.model.random_state,
                    copy=False,  # its input is always the scaler's own output
                ),
            )
        )
    if transform.float32:
        steps.append(
            (
                "float32",
                FunctionTransformer(
                    functools.partial(np.asarray, dtype=np.float32), feature_names_out="one-to-one"
                ),
            )
        )
    # numpy out: KMeans is fitted on arrays, so the served pipeline must hand it arrays too.
    return Pipeline(steps).set_output(transform="default")


def logged_columns(preprocessor: Pipeline) -> list[str]:
    """The features a built preprocessor log1p-transforms: what the served model applies, read
    from the model itself (naming and the run summary need the choice, not the config's ``auto``)."""
    step = preprocessor.named_steps["log1p"]
    return [name for name, transformer, _ in step.transformers if not isinstance(transformer, str)]


def _check_frame(clean: pd.DataFrame, config: PipelineConfig) -> None:
    """Fail with the column name instead of a deep sklearn/numpy error."""
    missing = [name for name in config.features if name not in clean.columns]
    if missing:
        raise ValueError(f"feature columns missing from the cleaned frame: {missing}")
    # column by column: clean[features] would copy them all
    nulls = {name: int(clean[name].isna().sum()) for name in config.features}
    nulls = {name: count for name, count in nulls.items() if count}
    if nulls:
        detail = ", ".join(f"{name}: {count}" for name, count in nulls.items())
        raise ValueError(f"features must be cleaned before building features; missing values in {detail}")
    for name in config.transform.log1p_columns:
        low = clean[name].min()
        if len(clean) and low <= -1:
            raise ValueError(f"log1p column {name} has values <= -1 (min {low}); clean the range first")


#: Rows per transform block: each block's float64 intermediates (log1p, scaled, projected) stay
#: a few MB, so transforming millions of rows costs the output matrix and no more.
TRANSFORM_BLOCK_ROWS = ROW_BLOCK


def _fit_row_blocks(clean: pd.DataFrame, features: list[str], mask: np.ndarray) -> Iterator[pd.DataFrame]:
    """The fit rows' features, one row block at a time (a block-sized copy each)."""
    for start in range(0, len(clean), TRANSFORM_BLOCK_ROWS):
        block = clean.iloc[start : start + TRANSFORM_BLOCK_ROWS][features]
        keep = mask[start : start + TRANSFORM_BLOCK_ROWS]
        if keep.any():
            yield block if keep.all() else block[keep]


def _fit(preprocessor: Pipeline, clean: pd.DataFrame, features: list[str], mask: np.ndarray, n_fit: int) -> None:
    """Fit the preprocessor on the ``mask`` rows holding one float64 copy of them, not four.

    ``Pipeline.fit`` holds the fit rows, the ColumnTransformer's stacked output, the scaler's
    variance scratch and PCA's copy at once. Here the stateless steps (log1p, the float32 cast)
    are fitted on one block; the log1p output of every fit row goes into one preallocated matrix;
    the scaler is fitted on it block by block (``partial_fit``: the same mean and variance, up
    to rounding) and scales it in place, and PCA (``copy=False``) fits on it as it is.
    """
    steps = preprocessor.named_steps
    log1p, scaler = steps["log1p"], steps["scale"]
    blocks = _fit_row_blocks(clean, features, mask)
    first = next(blocks)
    log1p.fit(first)
    Z = np.empty((n_fit, len(log1p.get_feature_names_out())), dtype=np.float64)
    at = 0
    for rows in itertools.chain([first], blocks):
        Z[at : at + len(rows)] = log1p.transform(rows)
        at += len(rows)
    for start in range(0, n_fit, TRANSFORM_BLOCK_ROWS):
        scaler.partial_fit(Z[start : start + TRANSFORM_BLOCK_ROWS])
    Z = scaler.transform(Z)  # in place (copy=False)
    projected = Z[:TRANSFORM_BLOCK_ROWS]
    if "pca" in steps:
        steps["pca"].fit(Z)
        projected = steps["pca"].transform(projected)
    if "float32" in steps:
        steps["float32"].fit(projected)


def _check_finite(X: np.ndarray, clean: pd.DataFrame, features: list[str], ids: pd.Series) -> None:
    """Finite but huge inputs (1e300 in a feature without a range) overflow once scaled; name
    them instead of letting KMeans fail with "Input X contains NaN"."""
    bad = ~np.isfinite(X).all(axis=1)
    if bad.any():
        values = clean[features]
        rows = values[bad]
        columns = sorted({str(rows.columns[i]) for i in np.abs(rows.to_numpy(dtype=np.float64)).argmax(axis=1)})
        examples = [
            f"customer {ids.iloc[i]}: " + ", ".join(f"{c}={values[c].iloc[i]:g}" for c in columns)
            for i in np.flatnonzero(bad)[:3]
        ]
        raise ValueError(
            f"{int(bad.sum())} customer(s) have values in {columns} too large to scale into the model "
            f"(e.g. {'; '.join(examples)}); give these features a plausible range in cleaning.ranges"
        )


def build_features(
    clean: pd.DataFrame,
    config: PipelineConfig,
    id_column: str,
    fit_mask: np.ndarray | None = None,
) -> FeatureMatrix:
    """Fit the preprocessor on ``fit_mask`` rows (default: all) and transform every row.

    A config still at ``transform.log1p: auto`` (a direct call; the pipeline passes the run's
    resolved one) is resolved on every row of ``clean``: the rows the cleaning step decides on."""
    if id_column not in clean.columns:
        raise ValueError(f"id column {id_column!r} is not in the cleaned frame")
    if config.transform.log1p_auto:
        config, _ = resolve_log1p(config, clean)
    _check_frame(clean, config)
    n = len(clean)
    mask = np.ones(n, dtype=bool) if fit_mask is None else np.asarray(fit_mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"fit_mask has shape {mask.shape}; expected ({n},) to match the frame")
    n_fit = int(mask.sum())
    if n_fit < 2:
        raise ValueError(f"need at least 2 rows to fit the preprocessor; fit_mask selects {n_fit}")

    features = list(config.features)
    preprocessor = build_preprocessor(config)
    _fit(preprocessor, clean, features, mask, n_fit)
    X = map_row_blocks(lambda start, stop: preprocessor.transform(clean.iloc[start:stop][features]), n,
                       block_rows=TRANSFORM_BLOCK_ROWS)
    _check_finite(X, clean, features, clean[id_column])
    component_names = [str(name) for name in preprocessor.get_feature_names_out()]

    pca: PCA | None = preprocessor.named_steps.get("pca")
    if pca is not None:
        explained = np.asarray(pca.explained_variance_ratio_, dtype=np.float64)
        loadings = pd.DataFrame(pca.components_.T, index=features, columns=component_names)
    else:
        variances = np.asarray(X[mask], dtype=np.float64).var(axis=0)
        total = variances.sum()
        explained = variances / total if total > 0 else np.zeros_like(variances)
        loadings = pd.DataFrame(np.eye(len(features)), index=features, columns=component_names)
    return FeatureMatrix(
        X=X,
        fit_mask=mask,
        preprocessor=preprocessor,
        component_names=component_names,
        explained_variance_ratio=explained,
        loadings=loadings,
    )
