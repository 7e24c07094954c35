"""Every relative link in the user docs (README, docs/, SECURITY, CHANGELOG, shards/, k8s/) names a file that
exists: a moved doc or a generated table pointing at the wrong folder is caught here, not by a reader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"\]\(([^)\s]+)\)")
_DOCS = sorted(
    {
        *REPO.glob("*.md"),
        *REPO.glob("docs/**/*.md"),
        *REPO.glob("shards/*.md"),
        *REPO.glob("k8s/**/*.md"),
    }
)


def _targets(document: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", document.read_text(), flags=re.S)  # code blocks hold shell, not links
    return [m for m in _LINK.findall(text) if not re.match(r"[a-z]+:|#", m)]


@pytest.mark.parametrize("document", _DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(document: Path) -> None:
    missing = [t for t in _targets(document) if not (document.parent / t.split("#", 1)[0]).exists()]
    assert not missing, f"{document.relative_to(REPO)} links to missing files: {missing}"


def test_the_docs_are_found() -> None:
    assert len(_DOCS) >= 8 and REPO / "README.md" in _DOCS
