"""The README's commands as the Makefile runs them: every meddiffuse-stream line must parse."""

import re
import shlex
from pathlib import Path

from meddiffuse_stream.cli import build_parser

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def _cli_lines() -> list[str]:
    """Every ``$(MDS) ...`` command of every recipe line, cut at the shell's ``&``, ``;`` and ``&&``."""
    text = MAKEFILE.read_text().replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        for segment in line.split("$(MDS) ")[1:]:
            commands.append(re.split(r"\s(?:&&|&|;)|;", segment, maxsplit=1)[0].strip())
    return commands


def test_every_cli_line_in_the_makefile_parses():
    lines = _cli_lines()
    assert len(lines) >= 6, "make demo runs the whole chain through meddiffuse-stream"
    for line in lines:
        arguments = shlex.split(line.replace("$@", "out.png"))
        build_parser().parse_args(arguments)  # exits (fails the test) on an unknown command or bad choice
