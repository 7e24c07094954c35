"""The pods' entry point: check the command before anything starts, size the shard cache to its volume, then run it.

Mounted from the ConfigMap meddiffuse-launch at /opt/meddiffuse/launch.py and run as

    python /opt/meddiffuse/launch.py [--shard-cache-size=SIZE] meddiffuse-stream SUBCOMMAND ...
    python /opt/meddiffuse/launch.py [--shard-cache-size=SIZE] torchrun [OPTIONS] --no-python meddiffuse-stream ...

What it adds to a plain ``meddiffuse-stream`` / ``torchrun`` command:

- Exit 2 for a command that cannot work, before any process or rendezvous starts: a ``$(VAR)`` that Kubernetes
  left unexpanded, a flag torchrun or meddiffuse-stream rejects (both parsed with the programs' own parsers), a
  torchrun setting it cannot use, a MEDDIFFUSE_DDP_TIMEOUT (the ranks' process-group timeout) that is not seconds.
  The Jobs' ``podFailurePolicy`` fails on exit 2 at once: retrying cannot help.
- Under torchrun, the exit code of the first failed rank instead of torchrun's 1 (a signal N as 128 + N), so a rank's
  exit 2 still reaches the pod and an OOM-killed rank reads 137.
- c10d rendezvous: the pod whose hostname is the first label of ``--rdzv-endpoint`` hosts the store
  (``is_host=1``). torch compares the whole name, and the endpoint (``NAME.SUBDOMAIN``) never equals the pod's
  fully qualified name in a cluster.
- ``--shard-cache-size=SIZE``: the shard cache sits on its own volume of SIZE (SHARD_CACHE_SIZE, the one value the
  manifests size that volume from); ``--shard-cache-bytes`` is set to 85 % of what that volume can hold — its size
  or, when less, the free space the filesystem has for this user plus what the cache already holds. The other 15 %
  is room for shards being downloaded (written beside the cache before they enter it) and the filesystem's own
  bookkeeping, so the cache never fills its volume.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import re
import socket
import sys
from pathlib import Path

PROGRAM = "meddiffuse-stream"
CACHE_SHARE = 0.85
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_UNITS = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_UNEXPANDED = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class UsageError(Exception):
    """The command cannot work as written: exit 2."""


def quantity_bytes(text: str) -> int:
    """A Kubernetes quantity (``40Gi``, ``500M``, ``1073741824``) in bytes."""
    match = _QUANTITY.match(text.strip())
    if match is None:
        raise UsageError(f"--shard-cache-size={text!r} is not a Kubernetes quantity such as 40Gi")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def cache_budget(cache_dir: str, volume_bytes: int) -> int:
    """Bytes the shard cache in ``cache_dir`` may keep: 85 % of what its volume can hold (see the module doc)."""
    existing = Path(cache_dir)
    while not existing.exists():  # the cache folder is made by the loader; measure the volume that will hold it
        existing = existing.parent
    stats = os.statvfs(existing)
    cached = sum(p.stat().st_size for p in Path(cache_dir).glob("*.tar")) if Path(cache_dir).is_dir() else 0
    capacity = min(volume_bytes, stats.f_bavail * stats.f_frsize + cached)
    return max(1 << 20, int(capacity * CACHE_SHARE) >> 20 << 20)  # whole MiB, at least one


def _option(args: list[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``args`` (the last one, as argparse takes it)."""
    value = None
    for index, arg in enumerate(args):
        if arg.startswith(f"{name}="):
            value = arg.split("=", 1)[1]
        elif arg == name and index + 1 < len(args):
            value = args[index + 1]
    return value


def _program_parser() -> argparse.ArgumentParser:
    """meddiffuse-stream's own parser, found through its console-script entry point (wherever the module lives)."""
    from importlib import import_module
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="console_scripts") if ep.name == PROGRAM]
    if not found:
        raise UsageError(f"{PROGRAM} is not installed in this image")
    module = import_module(found[0].module)
    if not hasattr(module, "build_parser"):
        raise UsageError(f"{found[0].module} has no build_parser(): this launcher does not match the image")
    return module.build_parser()


def check_program(argv: list[str]) -> None:
    """Parse ``meddiffuse-stream ...`` with its own parser; argparse exits 2 on a flag it rejects."""
    if not argv or Path(argv[0]).name != PROGRAM:
        raise UsageError(f"expected {PROGRAM} SUBCOMMAND ..., got {argv[:1]}")
    parser = _program_parser()
    parser.prog = PROGRAM
    parser.parse_args(argv[1:])


def _hosts_store(endpoint: str, hostname: str) -> bool:
    host = endpoint.rsplit(":", 1)[0] if endpoint.count(":") == 1 else endpoint
    try:
        ipaddress.ip_address(host.strip("[]"))
        return False  # an address: torch's own check (loopback, or one of ours) decides
    except ValueError:
        return host.split(".")[0] == hostname


def prepare_torchrun(argv: list[str], hostname: str) -> argparse.Namespace:
    """torchrun's arguments, checked the way torchrun would check them before it starts anything."""
    from torch.distributed.run import config_from_args, get_args_parser

    parser = get_args_parser()
    parser.prog = "torchrun"
    args = parser.parse_args(argv)
    program = [args.training_script, *args.training_script_args]
    if args.module or not args.no_python:
        raise UsageError(f"run the program as torchrun ... --no-python {PROGRAM} ..., not as a Python script/module")
    check_program(program)
    if args.rdzv_backend == "c10d" and args.rdzv_endpoint and "is_host" not in args.rdzv_conf:
        if _hosts_store(args.rdzv_endpoint, hostname):
            args.rdzv_conf = ",".join(filter(None, [args.rdzv_conf, "is_host=1"]))
    try:
        config_from_args(copy.deepcopy(args))  # node counts, nproc, rendezvous options: what torchrun would refuse
    except (ValueError, RuntimeError, AssertionError) as error:
        raise UsageError(f"torchrun: {error}") from None
    return args


def exit_code(failures: dict) -> int:
    """The first failed rank's exit code as a shell reports it (a signal N as 128 + N)."""
    first = failures[min(failures)]
    code = first.exitcode
    if code < 0:
        return 128 + (-code)
    return code if 0 < code < 256 else 1


def run_torchrun(args: argparse.Namespace) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import run

    try:
        run(args)
    except ChildFailedError as failed:
        code = exit_code(failed.failures)
        ranks = ", ".join(f"rank {rank}: exit {f.exitcode}" for rank, f in sorted(failed.failures.items()))
        print(f"launch: {PROGRAM} failed ({ranks}); exiting {code}", file=sys.stderr, flush=True)
        return code
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        unexpanded = sorted({name for arg in argv for name in _UNEXPANDED.findall(arg)})
        if unexpanded:
            raise UsageError(
                f"$({'), $('.join(unexpanded)}) reached the command unexpanded: set it in the pod's "
                "environment (ConfigMap meddiffuse-pipeline, env, or what the controller injects)"
            )
        timeout = os.environ.get("MEDDIFFUSE_DDP_TIMEOUT", "").strip()
        if timeout and (not re.fullmatch(r"[0-9]*\.?[0-9]+", timeout) or float(timeout) <= 0):
            raise UsageError(f"MEDDIFFUSE_DDP_TIMEOUT={timeout!r}: give the process-group timeout as seconds > 0")
        size = None
        while argv and argv[0].startswith("--shard-cache-size"):
            option = argv.pop(0)
            size = quantity_bytes(option.split("=", 1)[1] if "=" in option else argv.pop(0))
        if not argv:
            raise UsageError("usage: launch.py [--shard-cache-size=SIZE] (meddiffuse-stream|torchrun) ...")
        torchrun = Path(argv[0]).name == "torchrun"
        program = argv[argv.index(PROGRAM) :] if PROGRAM in argv else argv
        if size is not None:
            cache_dir = _option(program, "--shard-cache")
            if cache_dir is None:
                raise UsageError("--shard-cache-size needs --shard-cache=DIR in the command")
            if _option(program, "--shard-cache-bytes") is not None:
                raise UsageError("give --shard-cache-size (the cache's volume) or --shard-cache-bytes, not both")
            argv.append(f"--shard-cache-bytes={cache_budget(cache_dir, size)}")
        if torchrun:
            args = prepare_torchrun(argv[1:], socket.gethostname())
        else:
            check_program(argv)
    except UsageError as error:
        print(f"launch: error: {error}", file=sys.stderr, flush=True)
        return 2
    if not torchrun:
        os.execvp(argv[0], argv)  # the program itself, its exit code the pod's
    return run_torchrun(args)


if __name__ == "__main__":
    sys.exit(main())
