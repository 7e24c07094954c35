"""The README's quickstart runs as printed: its code blocks, in order, in a fresh folder — the local part as it is,
the object-storage part with its S3 server on free ports (the only change made to the text)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from seaweed import _free_block, _own_sockets

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

_BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.M | re.S)
_S3_PART = "**The same from object storage.**"
_END = "**A real bucket**"


def _quickstart() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """The quickstart's code blocks as ``(language, code)``: the local part, then the object-storage part."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    local, rest = section.split(_S3_PART, 1)
    remote = rest.split(_END, 1)[0]
    return _BLOCK.findall(local), _BLOCK.findall(remote)


def _script(blocks: list[tuple[str, str]]) -> str:
    """One bash script running the blocks in order; Python blocks run with this interpreter."""
    parts = ["set -euo pipefail", "trap 'kill -9 $(jobs -p) 2>/dev/null || true' EXIT"]
    for language, code in blocks:
        if language == "python":
            parts.append(f"{sys.executable} - <<'PYTHON_BLOCK'\n{code}PYTHON_BLOCK")
        else:
            assert language == "bash", f"unexpected code block language {language!r} in the quickstart"
            parts.append(code)
    return "\n".join(parts) + "\n"


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE"):
        env.pop(name, None)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=800)


def test_the_quickstart_has_both_parts() -> None:
    local, remote = _quickstart()
    assert [lang for lang, _ in local] == ["bash", "python", "bash"]
    assert [lang for lang, _ in remote] == ["bash", "python"]


def test_the_local_quickstart_runs_as_printed(tmp_path: Path) -> None:
    local, _ = _quickstart()
    result = _run(_script(local), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert "batches per epoch" in result.stdout
    assert (tmp_path / "runs" / "quickstart" / "metrics.json").exists()


@pytest.mark.s3
def test_the_object_storage_quickstart_runs_with_its_own_s3_server(tmp_path: Path) -> None:
    _, remote = _quickstart()
    port = _free_block()
    ports = {"8333": port, "9333": port + 1000, "9334": port + 1001, "9335": port + 1002}
    script = re.sub(r"\b(8333|9333|9334|9335)\b", lambda m: str(ports[m.group(1)]), _script(remote))
    try:
        result = _run(script, tmp_path)
    finally:
        for sock in _own_sockets(port):
            Path(sock).unlink(missing_ok=True)
    log = (tmp_path / "weed.log").read_text(errors="replace")[-2000:] if (tmp_path / "weed.log").exists() else ""
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:] + log
    streamed = re.search(r"(\d+) samples streamed from S3", result.stdout)
    assert streamed and 200 < int(streamed.group(1)) <= 400, result.stdout[-2000:]  # the train split of 400
