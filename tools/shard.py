#!/usr/bin/env python3
"""Convert RSNA / MURA / PCam / BreakHis / class folders / CSV manifests into WebDataset shards.

The same code as ``meddiffuse-stream shard``: ``python tools/shard.py FORMAT SRC OUT [options]``.
"""

from __future__ import annotations

import sys

from meddiffuse_stream.cli import main

if __name__ == "__main__":
    sys.exit(main(["shard", *sys.argv[1:]]))
