"""The asset checks' rules: exact counts, the rejected-share ceiling, the smallest segment."""

from segmentation_pipeline.core.quality_checks import rejected_share_within, rows_accounted_for, small_segments


def test_rows_accounted_for_only_when_counts_add_up():
    assert rows_accounted_for(100, 97, 3).passed
    lost = rows_accounted_for(100, 96, 3)
    assert not lost.passed and "!=" in lost.reason
    assert not rows_accounted_for(100, 98, 3).passed  # counted twice


def test_rejected_share_ceiling_is_inclusive():
    assert rejected_share_within(200, 100, 0.5).passed
    assert not rejected_share_within(200, 101, 0.5).passed
    assert rejected_share_within(0, 0, 0.1).passed


def test_small_segments_named_with_their_share():
    segments = [{"segment_id": 0, "share_pct": 60.0}, {"segment_id": 1, "share_pct": 39.5}, {"segment_id": 2, "share_pct": 0.5}]
    outcome = small_segments(segments, 0.01)
    assert not outcome.passed and "{2: 0.5}" in outcome.reason
    assert small_segments(segments, 0.005).passed
