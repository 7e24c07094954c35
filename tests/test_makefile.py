"""The README's commands as the Makefile runs them: every meddiffuse-stream line must parse."""

import shlex
from pathlib import Path

from meddiffuse_stream.cli import build_parser

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def _cli_lines() -> list[str]:
    text = MAKEFILE.read_text().replace("\\\n", " ")
    return [line.strip().removeprefix("$(MDS) ") for line in text.splitlines() if line.strip().startswith("$(MDS) ")]


def test_every_cli_line_in_the_makefile_parses():
    lines = _cli_lines()
    assert len(lines) >= 6, "make demo runs the whole chain through meddiffuse-stream"
    for line in lines:
        arguments = shlex.split(line.replace("$@", "out.png"))
        build_parser().parse_args(arguments)  # exits (fails the test) on an unknown command or bad choice
