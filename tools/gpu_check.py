#!/usr/bin/env python3
"""``make gpu-check``: on a bare GPU machine, set up, then check and measure every CUDA path in one bounded run.

Parts, each in a process of its own with a time box (its whole process group is killed at the end of it), so the
run fits ``--budget`` seconds (480 by default) however a part ends:

- ``tests``: ``pytest tests/gpu`` — device placement, pinned non-blocking copies, the stage's side stream
  overlapping the training stream, AMP, exact resume on CUDA;
- ``stage``: the device stage on demo data at 64 and 224 px, batch 64 — batched vs per-sample, a cold epoch
  (generating every variant) vs warm ones, the loader with the warm stage vs without;
- ``train_step``: ResNet-18 step time with ``augment=None``, ``standard`` and warm MedDiffuseMix, and the share of
  it spent waiting on the loader (goal < 10 % with MedDiffuseMix);
- ``torchrun``: a 1-GPU NCCL ``torchrun`` of ``meddiffuse-stream train``, killed and resumed with ``--resume``.

The report (``.bench/gpu.json``: every figure, the GPU, torch, CUDA, cuDNN and NCCL versions) is rewritten after
each part, so a run cut short keeps what it measured; a part that fails or times out is recorded with its error
and the rest still run. Every part's output goes to ``.bench/gpu-check.log``. ``--dry-run`` runs the same parts
on the CPU at tiny sizes (about a minute): that is how ``make test`` keeps this script working. Exit code 0 when
every part passed. Set-up is ``tools/gpu_setup.py``; the parts are ``tools/gpu_parts.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent
sys.path.insert(0, str(TOOLS))

from gpu_setup import SetupError, Toolchain, prepare  # noqa: E402

# seconds per part: the GPU run's boxes add up to the default budget with set-up (which has its own bounds)
BOXES = {"tests": 130, "stage": 120, "train_step": 90, "torchrun": 80}
DRY_BOXES = {"tests": 60, "stage": 90, "train_step": 90, "torchrun": 120}  # a loaded CPU is slow
MIN_PART_SECONDS = 15


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the same parts on the CPU at tiny sizes")
    parser.add_argument("--out", help="report (default .bench/gpu.json; .bench/gpu-dry-run.json with --dry-run)")
    parser.add_argument("--budget", type=float, default=480, help="seconds for the whole run, set-up included")
    parser.add_argument(
        "--parts",
        default=",".join(BOXES),
        help="comma-separated parts to run (default: all); "
        "with a subset the other parts' figures already in the report are kept",
    )
    parser.add_argument("--work", default=str(REPO / ".gpu" / "work"), help="scratch folder shared by the parts")
    parser.add_argument("--part", help=argparse.SUPPRESS)  # internal: run one part in this process
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        return _run_one_part(args.part, args.dry_run, Path(args.work), Path(args.result), args.deadline)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out = Path(args.out or REPO / ".bench" / ("gpu-dry-run.json" if args.dry_run else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_suffix(".log") if args.out else out.parent / f"{out.stem.replace('gpu', 'gpu-check')}.log"
    names = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = sorted(set(names) - set(BOXES))
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; choose from {list(BOXES)}")
    report = _previous(out) if set(names) != set(BOXES) else {}
    report.update(dry_run=args.dry_run, started=_now(), budget_s=args.budget)
    report.setdefault("parts", {})
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        say = _logger(log)
        say(f"gpu-check {'dry run ' if args.dry_run else ''}started; report {out}, log {log_path}")
        try:
            chain = prepare(REPO, need_cuda=not args.dry_run, log=say)
        except SetupError as error:
            report["setup"] = {"status": "failed", "error": str(error)}
            _write(out, report, started)
            say(f"set-up failed: {error}")
            return 1
        report["setup"] = {
            "status": "ok",
            "python": chain.python,
            "installed": chain.installed,
            "seconds": round(time.monotonic() - started, 1),
        }
        report["machine"] = _machine(chain)
        _write(out, report, started)
        boxes = DRY_BOXES if args.dry_run else BOXES
        for name in names:
            left = args.budget - (time.monotonic() - started)
            if left < MIN_PART_SECONDS:
                report["parts"][name] = {"status": "not_run", "error": f"out of time ({left:.0f} s of the budget left)"}
            else:
                report["parts"][name] = _run_part(chain, name, min(boxes[name], left), args, work, log, say)
            _write(out, report, started)
    failed = [name for name in names if report["parts"][name]["status"] != "ok"]
    print(
        f"gpu-check: {len(names) - len(failed)} of {len(names)} parts passed"
        + (f"; failed: {', '.join(failed)}" if failed else "")
        + f"; report {out}"
    )
    return 1 if failed else 0


def _run_part(
    chain: Toolchain, name: str, box: float, args: argparse.Namespace, work: Path, log: Any, say: Any
) -> dict[str, Any]:
    """One part in its own process group, killed at the end of its box; what it saved is kept either way."""
    result_file = work / f"part-{name}.json"
    result_file.unlink(missing_ok=True)
    command = [
        chain.python,
        str(TOOLS / "gpu_check.py"),
        "--part",
        name,
        "--work",
        str(work),
        "--result",
        str(result_file),
        "--deadline",
        str(time.time() + box - 5),
    ]
    command += ["--dry-run"] if args.dry_run else []
    say(f"part {name}: up to {box:.0f} s")
    log.flush()
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, env=chain.environ(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        code = process.wait(timeout=box)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        code, timed_out = process.wait(), True
    try:
        os.killpg(process.pid, signal.SIGKILL)  # anything the part left running (workers, torchrun children)
    except ProcessLookupError:
        pass
    record = json.loads(result_file.read_text()) if result_file.exists() else {"results": {}}
    record["seconds"] = round(time.monotonic() - started, 1)
    if timed_out:
        record.update(status="timed_out", error=f"killed after its {box:.0f} s box; results are what it had saved")
    elif code != 0 and record.get("status") != "failed":
        record.update(status="failed", error=f"exited {code} without a result: see {log.name}")
    say(
        f"part {name}: {record.get('status')} in {record['seconds']} s"
        + (f" — {record['error']}" if record.get("error") else "")
    )
    return record


def _run_one_part(name: str, dry_run: bool, work: Path, result_file: Path, deadline: float | None) -> int:
    """Inside the part's process: run it, saving its results after every measurement."""
    record: dict[str, Any] = {"status": "running", "results": {}}

    def save(results: dict[str, Any]) -> None:
        record["results"] = results
        temporary = result_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(record, indent=1, default=str) + "\n")
        os.replace(temporary, result_file)

    try:
        from gpu_parts import PARTS, Settings

        results = PARTS[name](Settings.for_run(dry_run), work, save, deadline or time.time() + 3600)
        problems = results.get("problems")
        record["status"] = "failed" if problems else "ok"
        if problems:
            record["error"] = "; ".join(problems)
        save(results)
        return 0
    except BaseException as error:
        record.update(
            status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc()[-4000:]
        )
        save(record["results"])
        traceback.print_exc()
        return 1


def _machine(chain: Toolchain) -> dict[str, Any]:
    """The GPU, driver, torch, CUDA, cuDNN and NCCL versions, Python, cores."""
    info = {k: v for k, v in chain.info.items() if k != "python"}
    info["cpu_cores"] = len(os.sched_getaffinity(0))
    try:
        query = "--query-gpu=name,driver_version,memory.total"
        smi = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        if smi.returncode == 0:
            info["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def _previous(out: Path) -> dict[str, Any]:
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        return {}


def _write(out: Path, report: dict[str, Any], started: float) -> None:
    report["updated"], report["wall_s"] = _now(), round(time.monotonic() - started, 1)
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=1, default=str) + "\n")
    os.replace(temporary, out)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _logger(log: Any):
    def say(message: str) -> None:
        line = f"[gpu-check {time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    return say


if __name__ == "__main__":
    sys.exit(main())
