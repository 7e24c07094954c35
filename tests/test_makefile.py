"""The README's commands as the Makefile runs them: every meddiffuse-stream line must parse."""

import re
import shlex
from pathlib import Path

from meddiffuse_stream.cli import build_parser

MAKEFILE = Path(__file__).resolve().parents[1] / "Makefile"


def test_every_cli_line_in_the_makefile_parses():
    lines = [line.strip() for line in MAKEFILE.read_text().splitlines() if "bin/meddiffuse-stream " in line]
    assert lines, "make demo runs meddiffuse-stream"
    for line in lines:
        arguments = shlex.split(re.sub(r"^.*bin/meddiffuse-stream ", "", line))
        build_parser().parse_args(arguments)  # exits (fails the test) on an unknown command or bad choice
