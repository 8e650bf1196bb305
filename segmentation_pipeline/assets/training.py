"""Stages 4–5: the k sweep, the final model (registered as challenger), and promotion."""

import json
from datetime import datetime, timezone

import dagster as dg
import mlflow

from segmentation_pipeline.assets.metadata import image, jsonable, plain_metadata, table
from segmentation_pipeline.core.algorithms import ALGORITHMS
from segmentation_pipeline.core.drift import reference_sample
from segmentation_pipeline.core.explain import explain_model
from segmentation_pipeline.core.features import logged_columns
from segmentation_pipeline.core.identity import migration_matrix, migration_plot
from segmentation_pipeline.core.k_evidence import evidence_records
from segmentation_pipeline.core.k_evidence_plots import evidence_plot
from segmentation_pipeline.core.k_selection import KSelection
from segmentation_pipeline.core.naming import segment_tiers
from segmentation_pipeline.core.plots import profile_plot
from segmentation_pipeline.core.promotion import PromotionGate, evaluate_promotion
from segmentation_pipeline.core.report import ReportInputs, drift_sentence, segment_report
from segmentation_pipeline.core.segment_model import (
    PromotionOutcome,
    TrainedSegmentation,
    build_segment_model,
    model_change,
)
from segmentation_pipeline.core.skew import with_log1p
from segmentation_pipeline.engines.base import Features
from segmentation_pipeline.resources import EngineResource, MlflowResource, SettingsResource
from segmentation_pipeline.storage import mlflow_registry as registry

SWEEP_METRICS = ("inertia", "silhouette", "davies_bouldin", "calinski_harabasz")
EVIDENCE_METRICS = ("gap", "gap_se", "stability", "smallest_share", "bic")


@dg.asset(
    group_name="training",
    kinds={"scikitlearn", "mlflow"},
    description=(
        "Sweep k and gather the evidence per k (inertia, silhouette, Davies–Bouldin, Calinski–Harabasz, gap, "
        "stability, smallest share); choose k by the evidence rule and grade the structure clear / weak / none."
    ),
)
def k_selection(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    compute: EngineResource,
    customer_features: Features,
) -> dg.Output[KSelection]:
    cfg = settings.load()
    ks = cfg.k_candidates

    def progress(k: int, row: dict) -> None:
        context.log.info(f"k sweep: fitted k={k} ({ks.index(k) + 1}/{len(ks)}), inertia={row['inertia']:.4g}")

    selection = compute.get().sweep_k(customer_features, cfg, progress=progress)
    context.log.info(
        "k sweep scores: "
        + ", ".join(f"k={r.k} silhouette={r.silhouette:.3f}" for r in selection.metrics.itertuples(index=False))
    )
    structure = selection.structure or "unknown"
    if structure != "clear":
        context.log.warning(f"segment structure is {structure} at k={selection.k}: {selection.reason}")
    evidence = selection.evidence
    # one figure: the WCSS elbow and the silhouette are two of its four panels
    evidence_png = None if evidence is None else evidence_plot(
        evidence.rename(columns={"smallest_share": "min_share"}), selection.k, f"structure: {structure}"
    )
    with registry.training_run(mlflow_tracking.target(), context.run.run_id):
        points = [(f"sweep_{metric}", float(getattr(row, metric)), int(row.k))
                  for row in selection.metrics.itertuples(index=False) for metric in SWEEP_METRICS]
        if evidence is not None:
            points += [(f"evidence_{metric}", float(record[metric]), int(record["k"]))
                       for record in evidence_records(evidence) for metric in EVIDENCE_METRICS
                       if record[metric] is not None]
            registry.log_frame(evidence, "k_selection/evidence.csv")
        registry.log_metric_steps(points, chosen_k=selection.k)
        mlflow.set_tag("k_reason", selection.reason)
        mlflow.set_tag("k_structure", structure)
        if structure != "clear":
            mlflow.set_tag("k_structure_warning", f"segment structure is {structure}: {selection.reason}")
        if evidence_png is not None:
            registry.log_png(evidence_png, "k_selection/evidence.png")
        registry.log_frame(selection.metrics, "k_selection/metrics.csv")
    metadata = {
        "k": dg.MetadataValue.int(selection.k),
        "reason": dg.MetadataValue.text(selection.reason),
        "structure": dg.MetadataValue.text(structure),
        "silhouette_sample_size": dg.MetadataValue.int(int(selection.silhouette_sample_size)),
        "metrics": table(selection.metrics),
    }
    if evidence is not None and evidence_png is not None:
        metadata["evidence"] = table(evidence)
        metadata["k_evidence"] = dg.MetadataValue.json(evidence_records(evidence))
        metadata["evidence_plot"] = image(evidence_png, "evidence per k")
    return dg.Output(selection, metadata=metadata)


@dg.asset(
    group_name="training",
    kinds={"scikitlearn", "mlflow"},
    description="Final model in one sklearn Pipeline, logged as a pyfunc and registered with alias 'challenger'.",
)
def segmentation_model(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    compute: EngineResource,
    clean_customers,
    customer_features: Features,
    k_selection: KSelection,
) -> dg.Output[TrainedSegmentation]:
    # the log1p columns the fitted preprocessor applies: the run's one choice (transform.log1p: auto)
    log1p = logged_columns(customer_features.preprocessor)
    cfg = with_log1p(settings.load(), log1p)
    target = mlflow_tracking.target()
    engine = compute.get()
    clusters = engine.fit_clusters(clean_customers, customer_features, k_selection.k, cfg)
    champion_version = registry.alias_version(target.tracking_uri, cfg.model.name, cfg.model.alias)
    champion = None
    if champion_version is not None:
        champion, _ = registry.load_assigner(target.tracking_uri, cfg.model.name, cfg.model.alias,
                                             version=champion_version)
    change = model_change(champion, cfg.features)
    if change is not None:  # another feature space: neither its ids nor its labels compare
        context.log.warning(f"{change}; the champion is not compared (promotion.on_features_changed decides)")
        champion = None
    cleaning_report = registry.run_json(target, context.run.run_id, "cleaning/report.json") or {}
    built = build_segment_model(
        clusters.label_profile, clusters.population, clusters.canonical, customer_features.preprocessor,
        clusters.model, cfg, champion, metadata={"engine": engine.name, "algorithm": cfg.model.algorithm},
        fences=cleaning_report.get("outliers", {}).get("fences"),
    )
    assigner, profile = built.assigner, built.profile
    eval_ids = assigner.label_to_segment.astype("int32")[clusters.eval_labels]
    champion_eval_ids = None
    migration = None
    if champion is not None:
        champion_eval_ids = engine.assign_eval(clean_customers, customer_features, clusters, champion)
        migration = migration_matrix(champion_eval_ids, eval_ids)
    # where the population is the evaluation rows (local engine), its ids are eval_ids: no int64 copy
    population_ids = eval_ids if clusters.population_labels is clusters.eval_labels \
        else assigner.label_to_segment[clusters.population_labels]
    explained = explain_model(
        clusters.population, population_ids, clusters.categories, cfg.features, built.names,
        value_feature=cfg.naming.value_feature,
        tiers=segment_tiers(profile, cfg.naming.tiers, cfg.naming.value_feature),
    )
    profile_png = profile_plot(profile, cfg.features, population=clusters.population, names=built.names)
    reference = reference_sample(clusters.population, population_ids, cfg.features, cfg.drift.sample,
                                 cfg.model.random_state).astype({"segment_id": "int64"})

    with registry.training_run(target, context.run.run_id) as run_id:
        registry.name_run(f"train k={k_selection.k} {datetime.now(timezone.utc):%Y-%m-%d}")
        mlflow.log_metrics({f"final_{k}": float(v) for k, v in clusters.metrics.items()})
        mlflow.set_tag("engine", engine.name)
        mlflow.set_tag("algorithm", cfg.model.algorithm)
        registry.log_params({"algorithm": cfg.model.algorithm})
        registry.log_frame(profile, "segments/profile.csv")
        registry.log_png(profile_png, "segments/profile.png")
        registry.log_frame(explained.summary, "segments/explanations.csv")
        registry.log_frame(explained.effects, "segments/feature_effects.csv")
        registry.log_frame(explained.categories, "segments/categorical_profiles.csv")
        if migration is not None:
            registry.log_frame(migration.reset_index(), "segments/migration_vs_champion.csv")
            registry.log_png(migration_plot(migration), "segments/migration_vs_champion.png")
        registry.log_reference(reference)
        version = registry.log_segmentation_model(assigner, clusters.population, cfg.model.name)
        drift = context.instance.get_latest_materialization_event(dg.AssetKey("segment_drift"))
        drift_facts = {} if drift is None or drift.asset_materialization is None else {
            k: getattr(v, "value", v) for k, v in drift.asset_materialization.metadata.items()}
        report_html = segment_report(ReportInputs(
            title=f"{cfg.model.name} v{version}: {len(profile)} customer segments",
            summary=explained.summary, effects=explained.effects, categories=explained.categories,
            k=k_selection.k, k_reason=k_selection.reason, k_metrics=k_selection.metrics, migration=migration,
            profile_png=profile_png,
            facts={"model": f"{cfg.model.name} v{version}", "customers profiled": f"{len(clusters.population):,}",
                   "MLflow run": run_id, "Dagster run": context.run.run_id,
                   "previous champion": f"v{champion_version}" if champion_version else "none"},
            drift=drift_sentence(drift_facts),
        ))
        report_file = registry.write_report(report_html, cfg.data_path, run_id)
    registry.set_alias(target.tracking_uri, cfg.model.name, cfg.model.challenger_alias, version)
    registry.describe_model(
        target.tracking_uri, cfg.model.name,
        f"Customer segments by {ALGORITHMS[cfg.model.algorithm].summary} on {', '.join(cfg.features)} (source table {cfg.source.table}). "
        f"Input: those columns per customer; output per row: segment_id, segment_name, is_outlier, error. "
        f"Alias {cfg.model.alias!r} is the version the segments table follows.",
    )
    registry.tag_version(
        target.tracking_uri, cfg.model.name, version,
        {"dagster_run_id": context.run.run_id, "k": str(k_selection.k), "k_reason": k_selection.reason,
         "engine": engine.name, "algorithm": cfg.model.algorithm, "log1p_columns": ",".join(log1p)},
    )
    context.log.info(f"registered {cfg.model.name} v{version} ({cfg.model.algorithm}, {engine.name} engine) as {cfg.model.challenger_alias!r}")
    trained = TrainedSegmentation(
        assigner=assigner, eval_segment_ids=eval_ids, model_name=cfg.model.name, model_version=version,
        mlflow_run_id=run_id, k=k_selection.k, k_reason=k_selection.reason, metrics=clusters.metrics,
        profile=profile, migration=migration, previous_champion=champion_version, champion=champion,
        champion_eval_ids=champion_eval_ids, model_change=change,
    )
    extra = {} if migration is None else {"migration_vs_champion": table(migration.reset_index())}
    if len(explained.categories):
        extra["categorical_profiles"] = table(explained.categories, max_rows=200, floatfmt=".3g")
    return dg.Output(trained, metadata=plain_metadata(
        model=f"{cfg.model.name} v{version}", mlflow_run_id=run_id, k=k_selection.k, metrics=clusters.metrics,
        profile=table(profile), segments=json.loads(profile.to_json(orient="records")),
        profile_plot=image(profile_png, "segment profiles"), engine=engine.name, algorithm=cfg.model.algorithm,
        explanations_table=table(explained.summary, floatfmt=".3g"),
        feature_effects=table(explained.effects, max_rows=200, floatfmt=".3g"),
        explanations=explained.records(), report_path=dg.MetadataValue.path(str(report_file)),
        report=dg.MetadataValue.url(report_file.as_uri()), **extra,
    ))


@dg.asset(
    group_name="training",
    kinds={"mlflow"},
    description="Champion/challenger gate: promote the new version to 'champion' only when it is at least as good and stable.",
)
def model_promotion(
    context: dg.AssetExecutionContext,
    settings: SettingsResource,
    mlflow_tracking: MlflowResource,
    customer_features: Features,
    segmentation_model: TrainedSegmentation,
) -> dg.Output[PromotionOutcome]:
    cfg = settings.load()
    target = mlflow_tracking.target()
    trained = segmentation_model
    mask = customer_features.eval_fit_mask
    champion_labels = None if trained.champion_eval_ids is None else trained.champion_eval_ids[mask]
    decision = evaluate_promotion(
        customer_features.X_eval_fit,
        champion_labels,
        trained.eval_segment_ids[mask],
        trained.k,
        PromotionGate(**cfg.promotion.model_dump()),
        random_state=cfg.model.random_state, model_change=trained.model_change, algorithm=cfg.model.algorithm,
    )
    # the alias itself moves in customer_segments, with the swap that publishes this version's segments
    champion_version = trained.model_version if decision.promote else str(trained.previous_champion)
    tags = {**decision.as_tags(), "promotion.decision": "promoted" if decision.promote else "rejected"}
    registry.tag_version(target.tracking_uri, cfg.model.name, trained.model_version, tags)
    gate = "promoted to champion" if decision.promote else f"not promoted (champion stays v{champion_version})"
    registry.describe_model(
        target.tracking_uri, cfg.model.name,
        f"k={trained.k} ({trained.k_reason}); trained on {customer_features.n_fit:,} of "
        f"{customer_features.n_rows:,} clean customers; silhouette {trained.metrics.get('silhouette', float('nan')):.3f}; "
        f"gate: {gate}: {'; '.join(decision.reasons)}",
        version=trained.model_version,
    )
    with registry.training_run(target, context.run.run_id):
        mlflow.set_tags(tags)
        registry.log_json({"promote": decision.promote, "reasons": decision.reasons, "evidence": decision.evidence},
                          "promotion/decision.json")
    verdict = "promoted (moves with the write-back) to" if decision.promote else "not promoted; keeps"
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
