"""The HTML report: every segment on one page, escaped, with nothing loaded from elsewhere."""

import re

import numpy as np
import pandas as pd

from segmentation_pipeline.core.explain import explain_model
from segmentation_pipeline.core.report import ReportInputs, drift_sentence, segment_report


def test_report_is_self_contained_and_escapes_names():
    population = pd.DataFrame({"income": [10.0, 30.0, 50.0, 70.0, 90.0]})
    names = {0: "<script>alert(1)</script>", 1: "High income"}
    explained = explain_model(population, np.array([0, 0, 1, 1, 1]),
                              pd.DataFrame({"channel": ["web", "shop", "web", "web", "shop"]}), ["income"], names)
    page = segment_report(ReportInputs(
        title="m v1", summary=explained.summary, effects=explained.effects, categories=explained.categories,
        k=2, k_reason="fixed", k_metrics=pd.DataFrame({"k": [2], "silhouette": [0.5]}),
        profile_png=b"\x89PNG fake",
    ))
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert 'id="segment-0"' in page and 'id="segment-1"' in page and "High income" in page
    assert "income 1.4× the average (+20)" in page
    assert "No previous champion" in page
    assert not re.search(r'(src|href)="(https?:)?//', page)  # no external resources
    assert 'src="data:image/png;base64,' in page


def test_drift_sentence_from_the_checks_facts():
    facts = {"severity": "warn", "drifted_features": ["annual_income", "age"], "segment_psi": 0.1234,
             "champion_version": "3"}
    assert drift_sentence(facts) == "severity warn against champion v3: drifted: annual_income, age; segment-share PSI 0.123"
    assert drift_sentence({"severity": "ok", "drifted_features": []}) == "severity ok: no feature drifted"
    assert drift_sentence({}) is None
