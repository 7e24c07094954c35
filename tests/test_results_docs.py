"""docs/results.md is generated from the raw results committed beside it: collect copies, render recomputes."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool():
    spec = importlib.util.spec_from_file_location("results_docs", REPO / "tools" / "results_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_run(folder: Path, gain: float) -> None:
    folder.mkdir(parents=True)
    rows = []
    for method, base in (("none", 0.70), ("meddiffusemix", 0.70 + gain)):
        for seed in range(3):
            for split in ("val", "test"):
                rows.append(
                    {
                        "method": method,
                        "seed": seed,
                        "fraction": 1.0,
                        "split": split,
                        "steps": 600,
                        "roc_auc": base + 0.01 * seed,
                        "roi_unchanged": 0.99 if method == "meddiffusemix" else "",
                        "delta_off": 9.5 if method == "meddiffusemix" else "",
                        "moved_off": 0.6 if method == "meddiffusemix" else "",
                    }
                )
    with open(folder / "results.csv", "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    provenance = {"git": {"commit": "abcdef1234567", "dirty": False}, "timing": {"seconds": 812.5}}
    (folder / "provenance.json").write_text(json.dumps(provenance))


def test_render_recomputes_the_tables_from_the_committed_csv(tmp_path):
    tool = _tool()
    docs = tmp_path / "docs"
    _write_run(docs / "demo", gain=0.05)
    document = tmp_path / "results.md"
    document.write_text("intro\n<!-- results:demo:start -->\nstale\n<!-- results:demo:end -->\noutro\n")
    assert tool.render(document, docs) == ["demo"]
    text = document.read_text()
    assert "stale" not in text and text.startswith("intro") and text.rstrip().endswith("outro")
    assert "| meddiffusemix − none | 1 | +0.050 ± 0.000 | +0.050 ± 0.000 |" in text
    assert "`abcdef1234`" in text and "812.5 s" in text
    assert "moved pixels by 9.5 grey levels" in text
    again = document.read_text()
    tool.render(document, docs)
    assert document.read_text() == again, "rendering is a pure function of the committed files"


def test_collect_copies_only_finished_runs(tmp_path):
    tool = _tool()
    _write_run(tmp_path / ".demo" / "experiment", gain=0.0)
    (tmp_path / ".demo" / "sweep").mkdir()
    (tmp_path / ".demo" / "sweep" / "sweep.csv").write_text("method\n")
    (tmp_path / ".paper" / "experiment").mkdir(parents=True)  # started, never finished: no provenance
    assert tool.collect(tmp_path, tmp_path / "out") == ["demo"]
    assert sorted(p.name for p in (tmp_path / "out" / "demo").iterdir()) == [
        "provenance.json",
        "results.csv",
        "sweep.csv",
    ]


@pytest.mark.parametrize("text", ["", "None"])
def test_empty_cells_read_as_missing(text):
    assert _tool()._number(text) is None


def test_the_sweep_table_shows_its_settings_and_puts_the_reference_last():
    tool = _tool()
    metrics = {"roi_unchanged": 0.99, "moved_off": 0.5, "protected_share": 0.1, "protected_to_lesion": 2.5}
    metrics["augmented_share"] = 0.35  # what a confidence gate costs is shown beside what it keeps
    rows = [
        {"method": "dafusion", "quantile": None, "peak": None, "delta_off": 30.0, "ssim": 0.4, **metrics},
        {"method": "meddiffusemix", "quantile": 0.9, "peak": 0.5, "delta_off": 12.0, "ssim": 0.7, **metrics},
        {"method": "meddiffusemix", "quantile": 0.7, "peak": 0.0, "delta_off": 18.0, "ssim": 0.6, **metrics},
    ]
    lines = tool.sweep_table(rows).splitlines()
    assert lines[0].startswith("| quantile | peak | lesion kept")
    assert lines[2].startswith("| 0.7 | 0.0 | 0.990 | 18.0") and lines[3].startswith("| 0.9 | 0.5 |")
    assert lines[4].startswith("| dafusion |  | 0.990 | 30.0")
    assert lines[0].endswith("| SSIM | images changed |") and lines[2].endswith("| 0.350 |")
