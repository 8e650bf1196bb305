"""Stages 4–5: the k sweep, the final KMeans (registered as challenger), and promotion."""


import json
from dataclasses import dataclass, field

import dagster as dg
import mlflow
import numpy as np
import pandas as pd

from segmentation_pipeline.assets._metadata import image, jsonable, table
from segmentation_pipeline.core.assigner import SegmentAssigner
from segmentation_pipeline.core.drift import reference_sample
from segmentation_pipeline.core.features import FeatureMatrix
from segmentation_pipeline.core.identity import (
    centroids_in_feature_space,
    match_segments,
    migration_matrix,
    migration_plot,
)
from segmentation_pipeline.core.k_selection import KSelection, select_k
from segmentation_pipeline.core.modeling import (
    build_model_pipeline,
    canonical_relabel,
    fit_kmeans,
    quality_metrics,
)
from segmentation_pipeline.core.naming import name_segments, profile_segments
from segmentation_pipeline.core.plots import elbow_plot, profile_plot, silhouette_plot
from segmentation_pipeline.core.promotion import PromotionDecision, PromotionGate, evaluate_promotion
from segmentation_pipeline.core.rows import map_row_blocks
from segmentation_pipeline.resources import MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry
from segmentation_pipeline.storage.tables import read_columns


@dataclass
class TrainedSegmentation:
    """What the final-model step hands on: the registered model and its labels for every clean row."""

    assigner: SegmentAssigner
    segment_ids: np.ndarray
    model_name: str
    model_version: str
    mlflow_run_id: str
    k: int
    k_reason: str
    metrics: dict[str, float]
    profile: pd.DataFrame
    migration: pd.DataFrame | None = None
    previous_champion: str | None = None
    # the champion as loaded once at training time, and its segment ids for the same clean rows:
    # promotion and write-back compare with / fall back to exactly this model, without reloading it
    champion: SegmentAssigner | None = None
    champion_segment_ids: np.ndarray | None = None


@dataclass
class PromotionOutcome:
    champion_version: str
    challenger_version: str
    promoted: bool
    decision: PromotionDecision
    extra: dict[str, str] = field(default_factory=dict)


@dg.asset(
    group_name="training",
    kinds={"scikitlearn", "mlflow"},
    description="Sweep k: inertia, silhouette (sampled), Davies–Bouldin, Calinski–Harabasz; choose k by the knee/silhouette rule.",
)
def k_selection(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    customer_features: FeatureMatrix,
) -> dg.Output[KSelection]:
    cfg = settings.load()
    X = customer_features.X[customer_features.fit_mask]
    sweep = select_k
    if cfg.engine == "spark":  # MLlib sweep over all fit rows, same k rule and MLflow records (spark_stages.py)
        from segmentation_pipeline.assets.spark_stages import select_k as sweep

        X = customer_features.spark_X_fit

    ks = cfg.k_candidates

    def progress(k: int, row: dict) -> None:
        context.log.info(f"k sweep: fitted k={k} ({ks.index(k) + 1}/{len(ks)}), inertia={row['inertia']:.4g}")

    selection = sweep(X, cfg, progress=progress)
    context.log.info(
        "k sweep scores: "
        + ", ".join(f"k={r.k} silhouette={r.silhouette:.3f}" for r in selection.metrics.itertuples(index=False))
    )
    elbow = elbow_plot(selection.metrics, selection.k)
    silhouette = silhouette_plot(selection.metrics, selection.k)
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
        for row in selection.metrics.itertuples(index=False):
            for metric in ("inertia", "silhouette", "davies_bouldin", "calinski_harabasz"):
                mlflow.log_metric(f"sweep_{metric}", float(getattr(row, metric)), step=int(row.k))
        mlflow.log_metric("chosen_k", selection.k)
        mlflow.set_tag("k_reason", selection.reason)
        registry.log_png(elbow, "k_selection/elbow.png")
        registry.log_png(silhouette, "k_selection/silhouette.png")
        registry.log_frame(selection.metrics, "k_selection/metrics.csv")
    return dg.Output(
        selection,
        metadata={
            "k": dg.MetadataValue.int(selection.k),
            "reason": dg.MetadataValue.text(selection.reason),
            "silhouette_sample_size": dg.MetadataValue.int(int(selection.silhouette_sample_size)),
            "metrics": table(selection.metrics),
            "elbow": image(elbow, "elbow curve"),
            "silhouette": image(silhouette, "silhouette curve"),
        },
    )


def _stable_ids(
    clean: pd.DataFrame,
    features: list[str],
    raw_labels: np.ndarray,
    canonical: np.ndarray,
    champion: SegmentAssigner | None,
) -> np.ndarray:
    """Map KMeans labels to segment ids that keep their meaning across retrains."""
    if champion is None or champion.centroids_original is None:
        return canonical
    new_centroids, new_labels = centroids_in_feature_space(clean, raw_labels, features)
    old_ids = sorted(int(s) for s in champion.segment_names)
    # ids retired by earlier retrains are never handed out again
    next_id = max(int(champion.metadata.get("next_segment_id", 0)), max(old_ids) + 1)
    mapping = match_segments(champion.centroids_original, new_centroids, old_ids=old_ids, next_id=next_id)
    label_to_segment = np.array(canonical, copy=True)
    for position, label in enumerate(new_labels):
        label_to_segment[int(label)] = int(mapping[position])
    return label_to_segment


@dg.asset(
    group_name="training",
    kinds={"scikitlearn", "mlflow"},
    description="Final KMeans in one sklearn Pipeline, logged as a pyfunc and registered with alias 'challenger'.",
)
def segmentation_model(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    clean_customers: pd.DataFrame,
    customer_features: FeatureMatrix,
    k_selection: KSelection,
) -> dg.Output[TrainedSegmentation]:
    cfg = settings.load()
    target = mlflow_tracking.target()
    if cfg.engine == "spark":  # MLlib KMeans exported into the same pyfunc (assets/spark_stages.py)
        from segmentation_pipeline.assets import spark_stages

        return spark_stages.segmentation_model(context, cfg, target, clean_customers, customer_features, k_selection)
    X, fit_mask = customer_features.X, customer_features.fit_mask
    kmeans = fit_kmeans(
        X[fit_mask],  # a copy already: centred in place rather than copied again
        k_selection.k,
        n_init=cfg.model.n_init,
        max_iter=cfg.model.max_iter,
        random_state=cfg.model.random_state,
        overwrite_input=True,
    )
    raw_labels = kmeans.predict(X)
    canonical = canonical_relabel(kmeans)
    # the scores do not depend on which id a cluster gets: computed before the feature values are read
    metrics = quality_metrics(
        X[fit_mask], raw_labels[fit_mask], sample=cfg.k_selection.silhouette_sample, random_state=cfg.model.random_state
    )
    metrics["inertia"] = float(kmeans.inertia_)
    metrics["n_iter"] = float(kmeans.n_iter_)
    # read only now, after the fit: the feature values are not held while KMeans runs
    clean = read_columns(clean_customers, list(cfg.features))

    champion: SegmentAssigner | None = None
    champion_version = registry.alias_version(target.tracking_uri, cfg.model.name, cfg.model.alias)
    if champion_version is not None:
        champion, _ = registry.load_assigner(target.tracking_uri, cfg.model.name, cfg.model.alias)
    label_to_segment = _stable_ids(clean, cfg.features, raw_labels, canonical, champion)
    segment_ids = label_to_segment.astype(np.int32)[raw_labels]

    profile = profile_segments(clean, segment_ids, cfg.features, cfg.naming.value_feature)
    names = name_segments(
        profile,
        clean,
        cfg.features,
        high_threshold=cfg.naming.high_threshold,
        tiers=cfg.naming.tiers,
        value_feature=cfg.naming.value_feature,
        log_features=cfg.transform.log1p,
    )
    profile.insert(1, "segment_name", profile["segment_id"].map(names))
    centroids, centroid_ids = centroids_in_feature_space(clean, segment_ids, cfg.features)
    order = np.argsort(centroid_ids)
    assigner = SegmentAssigner(
        pipeline=build_model_pipeline(customer_features.preprocessor, kmeans),
        features=list(cfg.features),
        label_to_segment=label_to_segment,
        segment_names={int(k): v for k, v in names.items()},
        centroids_original=centroids[order],
        metadata={
            "next_segment_id": str(
                max(int(label_to_segment.max()) + 1, int(champion.metadata.get("next_segment_id", 0)) if champion else 0)
            )
        },
    )

    migration = None
    champion_segment_ids = None
    if champion is not None:
        # block by block: the champion's transform of every row at once costs ~100 B a row
        champion_segment_ids = map_row_blocks(
            lambda start, stop: champion.assign(clean.iloc[start:stop])["segment_id"].to_numpy(np.int32),
            len(clean),
        )
        migration = migration_matrix(champion_segment_ids, segment_ids)
    profile_png = profile_plot(profile, cfg.features, population=clean, names=names)

    with registry.training_run(target, context.run.run_id) as run_id:
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in metrics.items()})
        registry.log_frame(profile, "segments/profile.csv")
        registry.log_png(profile_png, "segments/profile.png")
        if migration is not None:
            registry.log_frame(migration.reset_index(), "segments/migration_vs_champion.csv")
            registry.log_png(migration_plot(migration), "segments/migration_vs_champion.png")
        registry.log_reference(reference_sample(clean, segment_ids, cfg.features, cfg.drift.sample,
                                                cfg.model.random_state))
        version = registry.log_segmentation_model(assigner, clean, cfg.model.name)
    registry.set_alias(target.tracking_uri, cfg.model.name, cfg.model.challenger_alias, version)
    registry.tag_version(
        target.tracking_uri,
        cfg.model.name,
        version,
        {"dagster_run_id": context.run.run_id, "k": str(k_selection.k), "k_reason": k_selection.reason},
    )
    context.log.info(f"registered {cfg.model.name} v{version} as {cfg.model.challenger_alias!r}")
    trained = TrainedSegmentation(
        assigner=assigner,
        segment_ids=segment_ids,
        model_name=cfg.model.name,
        model_version=version,
        mlflow_run_id=run_id,
        k=k_selection.k,
        k_reason=k_selection.reason,
        metrics=metrics,
        profile=profile,
        migration=migration,
        previous_champion=champion_version,
        champion=champion,
        champion_segment_ids=champion_segment_ids,
    )
    metadata = {
        "model": dg.MetadataValue.text(f"{cfg.model.name} v{version}"),
        "mlflow_run_id": dg.MetadataValue.text(run_id),
        "k": dg.MetadataValue.int(k_selection.k),
        "metrics": dg.MetadataValue.json(jsonable(metrics)),
        "profile": table(profile),
        "segments": dg.MetadataValue.json(json.loads(profile.to_json(orient="records"))),
        "profile_plot": image(profile_png, "segment profiles"),
    }
    if migration is not None:
        metadata["migration_vs_champion"] = table(migration.reset_index())
    return dg.Output(trained, metadata=metadata)


@dg.asset(
    group_name="training",
    kinds={"mlflow"},
    description="Champion/challenger gate: promote the new version to 'champion' only when it is at least as good and stable.",
)
def model_promotion(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    customer_features: FeatureMatrix,
    segmentation_model: TrainedSegmentation,
) -> dg.Output[PromotionOutcome]:
    cfg = settings.load()
    target = mlflow_tracking.target()
    trained = segmentation_model
    fit_mask = customer_features.fit_mask
    champion_labels = None if trained.champion_segment_ids is None else trained.champion_segment_ids[fit_mask]
    decision = evaluate_promotion(
        customer_features.X[fit_mask],
        champion_labels,
        trained.segment_ids[fit_mask],
        trained.k,
        PromotionGate(**cfg.promotion.model_dump()),
        random_state=cfg.model.random_state,
    )
    champion_version = trained.model_version if decision.promote else str(trained.previous_champion)
    if decision.promote:
        registry.set_alias(target.tracking_uri, cfg.model.name, cfg.model.alias, trained.model_version)
    tags = {**decision.as_tags(), "promotion.decision": "promoted" if decision.promote else "rejected"}
    registry.tag_version(target.tracking_uri, cfg.model.name, trained.model_version, tags)
    with registry.training_run(target, context.run.run_id):
        mlflow.set_tags(tags)
        registry.log_json({"promote": decision.promote, "reasons": decision.reasons, "evidence": decision.evidence},
                          "promotion/decision.json")
    verdict = "promoted to" if decision.promote else "not promoted; keeps"
    context.log.info(f"{cfg.model.name} v{trained.model_version} {verdict} {cfg.model.alias!r}: {decision.reasons}")
    return dg.Output(
        PromotionOutcome(champion_version, trained.model_version, decision.promote, decision),
        metadata={
            "promoted": dg.MetadataValue.bool(decision.promote),
            "champion_version": dg.MetadataValue.text(champion_version),
            "challenger_version": dg.MetadataValue.text(trained.model_version),
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons)),
            "reason_list": dg.MetadataValue.json(list(decision.reasons)),
            "evidence": dg.MetadataValue.json(jsonable(decision.evidence)),
        },
    )
