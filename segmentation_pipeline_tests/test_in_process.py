"""In-process training runs: values are released after their last consumer, kept for retries."""

from __future__ import annotations

import gc
import os
import weakref

import dagster as dg
import pandas as pd
import pytest

import segmentation_pipeline.engines.local as local_engine
import segmentation_pipeline.in_process as in_process
import segmentation_pipeline.resources as resources
from segmentation_pipeline import cli
from segmentation_pipeline.core.demo_data import generate_customers
from segmentation_pipeline.definitions import ASSETS
from segmentation_pipeline.in_process import ReleasingMemoryIOManager, consumers_of, new_scratch_dir
from segmentation_pipeline.storage.bulk_load import load_frame
from segmentation_pipeline.storage.connection import create_db_engine
from segmentation_pipeline.storage.tables import ParquetTable
from segmentation_pipeline_tests.helpers import write_config

KEY = dg.AssetKey


def test_consumers_counts_readers_and_keeps_what_a_retried_step_reads() -> None:
    selected = {key for definition in ASSETS for key in definition.keys
                if definition.group_names_by_key[key] in {"extraction", "cleaning", "features", "training", "segments"}}
    counts, keep = consumers_of(ASSETS, selected)
    assert counts[KEY("raw_customers")] == 1  # cleaning only: released right after it
    assert counts[KEY("customer_features")] == 3  # sweep, final model, promotion
    assert counts[KEY("clean_customers")] == 3  # features, final model, write-back
    # customer_segments has a retry policy: what it reads must survive a failed attempt
    assert keep == {KEY("clean_customers"), KEY("rejected_customers"), KEY("segmentation_model"),
                    KEY("model_promotion")}
    assert KEY("scored_customers") not in counts  # outside the selection: its reads are not counted


def test_io_manager_drops_a_value_after_its_last_consumer_and_keeps_retried_inputs() -> None:
    manager = ReleasingMemoryIOManager({KEY("a"): 2, KEY("b"): 1}, keep=frozenset({KEY("b")}))
    manager.handle_output(dg.build_output_context(asset_key=KEY("a")), [1])
    manager.handle_output(dg.build_output_context(asset_key=KEY("b")), [2])
    manager.handle_output(dg.build_output_context(asset_key=KEY("unread")), [3])  # nobody reads it
    assert manager.held == ["a", "b"]

    def load(name: str) -> object:
        upstream = dg.build_output_context(asset_key=KEY(name))
        return manager.load_input(dg.build_input_context(asset_key=KEY(name), upstream_output=upstream))

    assert load("a") == [1] and manager.held == ["a", "b"]  # one consumer still to come
    assert load("a") == [1] and manager.held == ["b"]
    assert load("b") == [2] and load("b") == [2] and manager.held == ["b"]  # a retry loads it again
    with pytest.raises(KeyError, match="no value for a in this run"):
        load("a")


def test_a_step_change_collects_garbage_only_once_the_run_has_grown(monkeypatch) -> None:
    collections: list[int] = []
    monkeypatch.setattr(in_process.gc, "collect", lambda *args: collections.append(1) or 0)

    def step_changes(growth: int) -> int:
        collections.clear()
        readings = iter([1 << 30, (1 << 30) + growth, (1 << 30) + growth])  # at start, then at each step change
        monkeypatch.setattr(in_process, "resident_bytes", lambda: next(readings))
        manager = ReleasingMemoryIOManager({KEY("a"): 1, KEY("b"): 1}, keep=frozenset())
        for name in ("a", "b"):
            manager.handle_output(dg.build_output_context(asset_key=KEY(name)), [name])
        for step, name in (("first", "a"), ("second", "b")):
            upstream = dg.build_output_context(asset_key=KEY(name))
            manager.load_input(dg.build_input_context(asset_key=KEY(name), upstream_output=upstream,
                                                      op_def=dg.OpDefinition(compute_fn=lambda: None, name=step)))
        return len(collections)

    assert in_process.resident_bytes() is not None  # Linux: the rule is live here
    assert step_changes(in_process.COLLECT_ABOVE_BYTES + 1) == 2  # grown past the threshold: each new step collects
    assert step_changes(in_process.COLLECT_ABOVE_BYTES // 2) == 0  # a small run's steps skip the ~0.1 s collection


def test_io_manager_hands_tables_on_as_parquet_files(tmp_path) -> None:
    manager = ReleasingMemoryIOManager({KEY("clean"): 1, KEY("model"): 1}, keep=frozenset(), scratch=tmp_path)
    frame = pd.DataFrame({"customer_id": [3, 1, 2], "age": [30.0, 40.0, 50.0]})
    manager.handle_output(dg.build_output_context(asset_key=KEY("clean")), frame)
    manager.handle_output(dg.build_output_context(asset_key=KEY("model")), {"k": 3})  # not a table: in memory
    upstream = dg.build_output_context(asset_key=KEY("clean"))
    table = manager.load_input(dg.build_input_context(asset_key=KEY("clean"), upstream_output=upstream))
    assert isinstance(table, ParquetTable) and table.path.parent == tmp_path
    pd.testing.assert_frame_equal(table.read(["age"]), frame[["age"]])
    model = dg.build_output_context(asset_key=KEY("model"))
    assert manager.load_input(dg.build_input_context(asset_key=KEY("model"), upstream_output=model)) == {"k": 3}


def test_scratch_dirs_of_dead_runs_are_removed_and_live_ones_kept(tmp_path) -> None:
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = new_scratch_dir(tmp_path)
    (killed / "owner.pid").write_text(dead.stdout.strip())  # its process has exited: a killed run
    (killed / "clean_customers.parquet").write_bytes(b"x" * 10)
    live = new_scratch_dir(tmp_path)  # this process: alive
    unknown = tmp_path / ".run-tables-foreign"
    unknown.mkdir()  # no owner file: not ours to judge
    fresh = new_scratch_dir(tmp_path)
    assert not killed.exists() and live.exists() and unknown.exists() and fresh.exists()
    assert fresh != live and (fresh / "owner.pid").read_text() == str(os.getpid())


def test_cli_run_releases_the_raw_table_before_the_sweep(tmp_path, sqlite_url, local_mlflow_uri, monkeypatch) -> None:
    frame, _ = generate_customers(1500, seed=3)
    load_frame(create_db_engine(sqlite_url), "customers", frame, if_exists="replace")
    config = write_config(tmp_path, sqlite_url, local_mlflow_uri, **{"k_range": [2, 5]})
    raw_refs: list[weakref.ref] = []
    alive_at_sweep: list[bool] = []

    real_read, real_select = local_engine.read_customers, local_engine.select_k

    def read_customers(*args, **kwargs) -> pd.DataFrame:
        raw = real_read(*args, **kwargs)
        raw_refs.append(weakref.ref(raw))
        return raw

    def select_k(*args, **kwargs):
        gc.collect()
        alive_at_sweep.append(raw_refs[0]() is not None)
        return real_select(*args, **kwargs)

    loads: list[tuple] = []
    real_load = resources.load_config

    def load_config(*args, **kwargs):
        loads.append(args)
        return real_load(*args, **kwargs)

    builds: list[tuple] = []
    real_build = in_process.build_training_job
    monkeypatch.setattr(in_process, "build_training_job", lambda *a: builds.append(a) or real_build(*a))
    monkeypatch.setattr(resources, "load_config", load_config)
    monkeypatch.setattr(local_engine, "read_customers", read_customers)
    monkeypatch.setattr(local_engine, "select_k", select_k)
    summary = cli.run_pipeline(str(config))

    assert alive_at_sweep == [False], "the raw table outlived its only consumer (cleaning)"
    assert len(loads) == 1, f"one CLI run read its config {len(loads)} times"
    assert len(builds) == 1, f"one run built its job {len(builds)} times"
    assert summary["n_input"] == len(frame) == summary["n_segmented"] + summary["n_rejected"]
    assert summary["promoted"] and summary["promotion_reasons"] and summary["segments"]
    assert {s["segment_id"] for s in summary["segments"]} == set(range(summary["k"]))
    data_dir = tmp_path / "data"
    assert data_dir.is_dir() and not list(data_dir.glob(".run-tables-*"))  # the run's table files are gone


def test_the_first_run_of_a_process_freezes_without_a_full_collection_later_runs_collect_first(monkeypatch) -> None:
    collections: list[str] = []
    monkeypatch.setattr(in_process, "_RUNS_IN_PROCESS", 0)
    monkeypatch.setattr(in_process.gc, "collect", lambda *a: collections.append("collect") or 0)
    try:
        in_process.freeze_heap()
        assert collections == [] and gc.get_freeze_count() > 0
        gc.unfreeze()
        in_process.freeze_heap()  # a second run in this process: the first one's tables are collectable
        assert collections == ["collect"] and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
