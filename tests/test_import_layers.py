"""The package's structure, drawn from its imports: no upward import, no circle, a small package root."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from import_layers import FLOORS, floor_of, import_graph, violations  # noqa: E402

PACKAGE = ROOT / "meddiffuse_stream"


def test_no_upward_import_and_no_circle() -> None:
    assert violations(PACKAGE) == []


def test_every_module_has_a_floor() -> None:
    assert [m for m in import_graph(PACKAGE) if floor_of(m) is None] == []


def test_package_root_stays_small() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= 10, loose


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..loader import MedDiffuseLoader\n", "upward import: augment.planted (floor 6) imports loader"),
        ("from .planted_b import x\n", "import circle: augment.planted -> augment.planted_b"),
    ],
)
def test_checker_sees_what_it_forbids(tmp_path: Path, source: str, expected: str) -> None:
    """The check itself fails on a planted upward import and a planted circle (it is not vacuous)."""
    fake = tmp_path / "meddiffuse_stream"
    (fake / "augment").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "loader.py").write_text("")
    (fake / "augment" / "__init__.py").write_text("")
    (fake / "augment" / "planted.py").write_text(source)
    (fake / "augment" / "planted_b.py").write_text("from .planted import y\n")
    found = violations(fake)
    assert any(line.startswith(expected) for line in found), found


def test_floor_prefixes_are_unique() -> None:
    prefixes = [p for p, _ in FLOORS]
    assert len(prefixes) == len(set(prefixes))
