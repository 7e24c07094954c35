#!/usr/bin/env python3
"""docs/results.md, generated from the raw results committed beside it (run by `make readme-results`).

``--collect`` first copies what the last ``make demo`` / ``make paper`` wrote (per-seed ``results.csv``,
``provenance.json``, ``variants.json``, ``saliency.json``, the sweep's ``sweep.csv`` and the plots) into
``docs/results/demo`` and ``docs/results/paper``. Rendering reads only those committed files: every table in
docs/results.md can be regenerated, and checked, from them. Nothing in it is typed by hand.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {
    "demo": (".demo/experiment", ".demo/sweep", ".demo/preview.png"),
    "paper": (".paper/experiment", "", ""),
    "paper-vit": (".paper/experiment-vit", "", ""),
}
FILES = ("results.csv", "provenance.json", "variants.json", "saliency.json", "metrics.png", "evidence.png")
START, END = "<!-- results:{name}:start -->", "<!-- results:{name}:end -->"


def collect(root: Path, docs: Path) -> list[str]:
    """Copy each finished run's raw results into ``docs/<name>``; the names of the runs copied."""
    copied = []
    for name, (experiment, sweep, preview) in SOURCES.items():
        folder = root / experiment
        if not (folder / "results.csv").exists() or not (folder / "provenance.json").exists():
            continue
        target = docs / name
        target.mkdir(parents=True, exist_ok=True)
        for file in FILES:
            if (folder / file).exists():
                shutil.copyfile(folder / file, target / file)
        for extra in ([root / sweep / "sweep.csv", root / sweep / "sweep.png"] if sweep else []) + (
            [root / preview] if preview else []
        ):
            if extra.exists():
                shutil.copyfile(extra, target / extra.name)
        copied.append(name)
    return copied


def _number(text: str) -> Any:
    if text in ("", "None"):
        return None
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text else value


def read_rows(path: Path) -> list[dict[str, Any]]:
    with open(path, newline="") as stream:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(stream)]


def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


# the sweep's metric columns (tools/mix_sweep.py COLUMNS) and their headings, in table order
SWEEP_HEADINGS = {
    "roi_unchanged": "lesion kept",
    "delta_off": "Δ off lesion (grey)",
    "moved_off": "off-lesion px > 2",
    "protected_share": "protected",
    "protected_to_lesion": "protected / lesion",
    "ssim": "SSIM",
    "augmented_share": "images changed",
}
METRICS = tuple(SWEEP_HEADINGS)
HEADINGS = tuple(SWEEP_HEADINGS.values())


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """The sweep as a table: its setting columns, then the metrics; MedDiffuseMix by change, DA-Fusion last."""

    def cell(value: Any, digits: int = 3) -> str:
        return "n/a" if value is None or value == "" else f"{value:.{digits}f}"

    ignored = ("method", "accepted", "attenuated", "rejected")
    findings = [k for k in rows[0] if k.startswith("roi_unchanged:")]  # multi-label: each finding's ROI kept
    settings = [k for k in rows[0] if k not in METRICS and k not in ignored and k not in findings]
    metrics = [METRICS[0], *findings, *METRICS[1:]]
    headings = [HEADINGS[0], *(f"{k.split(':', 1)[1]} kept" for k in findings), *HEADINGS[1:]]
    lines = ["| " + " | ".join(settings + headings) + " |", "|---" * (len(settings) + len(headings)) + "|"]
    ours = sorted((r for r in rows if r["method"] == "meddiffusemix"), key=lambda r: -(r["delta_off"] or 0))
    for row in ours + [r for r in rows if r["method"] != "meddiffusemix"]:
        if row["method"] == "meddiffusemix":
            shown = ["n/a" if row[k] is None else str(row[k]) for k in settings]
        else:
            shown = [row["method"]] + [""] * (len(settings) - 1)
        digits = {"delta_off": 1, "protected_to_lesion": 1}
        lines.append("| " + " | ".join(shown + [cell(row.get(m), digits.get(m, 3)) for m in metrics]) + " |")
    return "\n".join(lines) + "\n"


def _generator(provenance: dict[str, Any]) -> str:
    """The variant report's generator id; where it did not run (multi-label), the configuration's hash."""
    if provenance.get("identity"):
        return f"`{provenance['identity']}`"
    inputs = provenance.get("inputs", {}).get("generator") or {}
    return f"config sha256 `{inputs['config_sha256']}`" if inputs.get("config_sha256") else "none"


def render_block(folder: Path) -> str:
    """The generated text for one result set: provenance line, results table and reading, sweep."""
    from meddiffuse_stream.jobs.experiment_report import summarise

    provenance = _json(folder / "provenance.json") or {}
    git = provenance.get("git", {})
    timing = provenance.get("timing", {})
    teacher = provenance.get("inputs", {}).get("teacher", {})
    settings = provenance.get("settings", {})
    head = (
        f"Raw results: [`results.csv`](results/{folder.name}/results.csv) (one row per method, seed and split), "
        f"[`provenance.json`](results/{folder.name}/provenance.json). Commit `{str(git.get('commit'))[:10]}`"
        f"{' (with local changes)' if git.get('dirty') else ''}; teacher `{teacher.get('model')}` "
        f"sha256 `{teacher.get('sha256')}`; generator {_generator(provenance)}; students "
        f"`{settings.get('model')}`, {settings.get('steps') or settings.get('epochs')} "
        f"{'steps' if settings.get('steps') else 'epochs'}, seeds {settings.get('seeds')}; the experiment's own "
        f"wall time {timing.get('seconds')} s ({timing.get('cells_run_now')} of {timing.get('runs')} cells trained "
        "in that run).\n\n"
    )
    body = summarise(
        read_rows(folder / "results.csv"), _json(folder / "variants.json"), _json(folder / "saliency.json")
    )
    if (folder / "sweep.csv").exists():
        body += "\nThe protected region's trade-off ([`sweep.csv`](results/" + folder.name + "/sweep.csv)):\n\n"
        body += sweep_table(read_rows(folder / "sweep.csv"))
    return head + body


def render(document: Path, docs: Path) -> list[str]:
    """Replace each result set's block in ``document``; the names rendered."""
    text = document.read_text()
    rendered = []
    for name in SOURCES:
        start, end = START.format(name=name), END.format(name=name)
        folder = docs / name
        if start not in text or not (folder / "results.csv").exists():
            continue
        head, rest = text.split(start, 1)
        text = f"{head}{start}\n{render_block(folder).strip()}\n{end}{rest.split(end, 1)[1]}"
        rendered.append(name)
    document.write_text(text)
    return rendered


# `make demo-multilabel`: the multi-finding phantom's run, its own block (collected and rendered beside the others)
MULTILABEL = ("multilabel", ".demo/multilabel/experiment", ("make_timing.json",), ".demo/multilabel/sweep")


def collect_multilabel(root: Path, docs: Path) -> list[str]:
    """Copy the last ``make demo-multilabel``'s raw results (and the target's wall time, ``make_timing.json``) into
    ``docs/multilabel``; ``["multilabel"]`` if there was one."""
    name, experiment, extra, sweep = MULTILABEL
    folder = root / experiment
    if not (folder / "results.csv").exists() or not (folder / "provenance.json").exists():
        return []
    target = docs / name
    target.mkdir(parents=True, exist_ok=True)
    for source in (*(folder / f for f in (*FILES, *extra)), root / sweep / "sweep.csv", root / sweep / "sweep.png"):
        if source.exists():
            shutil.copyfile(source, target / source.name)
    return [name]


def render_multilabel(document: Path, docs: Path) -> list[str]:
    """Replace the multi-label block of ``document`` (its ``results:multilabel`` markers) from ``docs/multilabel``."""
    name = MULTILABEL[0]
    start, end = START.format(name=name), END.format(name=name)
    folder = docs / name
    text = document.read_text()
    if start not in text or not (folder / "results.csv").exists():
        return []
    block = render_block(folder).strip()
    timing = _json(folder / "make_timing.json")
    if timing:
        block = (
            f"`make demo-multilabel` took {timing['seconds'] // 60} min {timing['seconds'] % 60} s of wall time "
            f"({'every step, from a clean tree' if timing['clean'] else 'only the steps not already made'}; "
            f"{timing['cores']} cores, load average {timing['load']} at the end).\n\n" + block
        )
    head, rest = text.split(start, 1)
    document.write_text(f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}")
    return [name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--collect", action="store_true", help="copy the last runs' raw results into docs/results")
    parser.add_argument("--document", default=str(ROOT / "docs" / "results.md"))
    args = parser.parse_args(argv)
    docs = ROOT / "docs" / "results"
    if args.collect:
        copied = collect(ROOT, docs) + collect_multilabel(ROOT, docs)
        if not copied:
            print("no finished run to collect: run `make demo` (and `make paper`) first", file=sys.stderr)
            return 1
        print(f"collected {', '.join(copied)} into {docs}")
    rendered = render(Path(args.document), docs) + render_multilabel(Path(args.document), docs)
    print(f"{args.document}: rendered {', '.join(rendered) or 'nothing (no markers or no results)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
