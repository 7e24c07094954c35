#!/usr/bin/env python3
"""Put the demo's results table and preview picture into README.md (run by `make readme-results`, never by hand).

Replaces the text between the two demo-results markers with ``.demo/experiment/results.md`` and copies
``.demo/preview.png`` to ``tools/assets/demo-preview.png``, which the README shows.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def main() -> int:
    results = ROOT / ".demo" / "experiment" / "results.md"
    preview = ROOT / ".demo" / "preview.png"
    if not results.exists() or not preview.exists():
        print("run `make demo` first: .demo/experiment/results.md and .demo/preview.png are missing", file=sys.stderr)
        return 1
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        print(f"README.md lacks the markers {START} / {END}", file=sys.stderr)
        return 1
    shutil.copyfile(preview, ROOT / "tools" / "assets" / "demo-preview.png")
    block = f"{START}\n{results.read_text().strip()}\n\n![MedDiffuseMix preview](tools/assets/demo-preview.png)\n{END}"
    head, rest = text.split(START, 1)
    readme.write_text(head + block + rest.split(END, 1)[1])
    print("README.md: demo results and preview updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
