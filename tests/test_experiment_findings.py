"""The multi-label experiment's report: a multi-label model's row values, the per-finding table and its reading
(which finding each method kept least of, whether MedDiffuseMix kept 97 % of every one), and its generated block
in docs/results.md with the make target's wall time."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

from meddiffuse_stream.jobs.experiment import METRICS
from meddiffuse_stream.jobs.experiment_findings import findings_of, findings_section, split_metrics
from meddiffuse_stream.jobs.experiment_report import summarise

REPO = Path(__file__).resolve().parents[1]
FINDINGS = ("nodule", "band", "line")


def _rows(kept_line: float) -> list[dict]:
    rows = []
    for method, kept in (("mixup", {"nodule": 0.0, "band": 0.01, "line": 0.0}), ("meddiffusemix", None)):
        kept = kept or {"nodule": 0.99, "band": 0.985, "line": kept_line}
        for seed in range(3):
            for split in ("val", "test"):
                row = {"method": method, "seed": seed, "fraction": 1.0, "split": split, "steps": 600}
                row.update(roc_auc=0.8 + 0.01 * seed, roi_unchanged=min(kept.values()), delta_off=12.0)
                row.update(moved_off=0.6)
                for finding in FINDINGS:
                    row[f"auc:{finding}"] = 0.7 + 0.05 * FINDINGS.index(finding) + 0.01 * seed
                    row[f"roi_unchanged:{finding}"] = kept[finding] + 0.001 * seed
                    row[f"w_roi:{finding}"] = 0.0 if method == "meddiffusemix" else 0.4
                rows.append(row)
    return rows


def test_a_multi_label_model_gives_macro_scores_and_each_finding_auc():
    metrics = {"task": "multi_label", "roc_auc": 0.8, "macro_ap": 0.6, "micro_auc": 0.82}
    metrics["auc_per_class"] = {"nodule": 0.9, "band": None}
    assert split_metrics(metrics, METRICS) == {
        "roc_auc": 0.8,
        "macro_ap": 0.6,
        "micro_auc": 0.82,
        "auc:nodule": 0.9,
        "auc:band": None,
    }
    single = {"accuracy": 0.9, "macro_f1": 0.8, "roc_auc": 0.95, "cohen_kappa": 0.7, "auc_per_class": {}}
    assert split_metrics(single, METRICS) == {"accuracy": 0.9, "macro_f1": 0.8, "roc_auc": 0.95, "cohen_kappa": 0.7}


def test_the_table_has_a_row_per_method_and_finding_and_the_reading_names_the_least_kept():
    rows = _rows(kept_line=0.975)
    assert findings_of(rows) == list(FINDINGS)
    section = findings_section(rows)
    assert "| meddiffusemix | line | 0.810 ± 0.025 | 0.810 ± 0.025 | 0.976 ± 0.002 | n/a | 0.000 ± 0.000 |" in section
    assert "| mixup | band |" in section and section.count("\n| ") == 2 * 3  # the rows after the header
    assert (
        "meddiffusemix kept nodule 99.1%, band 98.6%, line 97.6% of the findings' ROI pixels (least: line)" in section
    )
    assert "mixup kept nodule 0.1%, band 1.1%, line 0.1%" in section
    assert "MedDiffuseMix kept at least 97% of every finding's ROI pixels." in section
    assert "less than 97% of line" in findings_section(_rows(kept_line=0.9))
    assert findings_section(_rows(0.99)) in summarise(_rows(0.99)), "the overall report carries it"
    single = [{k: v for k, v in row.items() if ":" not in k} for row in _rows(0.99)]
    assert findings_section(single) == "" and "finding |" not in summarise(single)


def _tool():
    spec = importlib.util.spec_from_file_location("results_docs", REPO / "tools" / "results_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("clean", [True, False])
def test_the_multilabel_block_is_rendered_from_its_raw_results_with_the_target_wall_time(tmp_path, clean):
    tool = _tool()
    run = tmp_path / "root" / ".demo" / "multilabel" / "experiment"
    run.mkdir(parents=True)
    rows = _rows(0.99)
    with open(run / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (run / "provenance.json").write_text(json.dumps({"git": {"commit": "0123456789ab"}, "timing": {"seconds": 400}}))
    (run / "make_timing.json").write_text(json.dumps({"seconds": 754, "clean": clean, "cores": 2, "load": "2.1"}))
    docs = tmp_path / "docs"
    assert tool.collect_multilabel(tmp_path / "root", docs) == ["multilabel"]
    document = tmp_path / "results.md"
    document.write_text("a\n<!-- results:multilabel:start -->\nold\n<!-- results:multilabel:end -->\nb\n")
    assert tool.render_multilabel(document, docs) == ["multilabel"]
    text = document.read_text()
    assert "old" not in text and text.startswith("a\n") and text.endswith("b\n")
    assert "`make demo-multilabel` took 12 min 34 s of wall time" in text
    assert ("every step, from a clean tree" in text) == clean
    assert "| meddiffusemix | band |" in text and "(least: band)" in text
    assert tool.collect_multilabel(tmp_path / "elsewhere", docs) == []
