"""Resident memory of a process and all its descendants (decode workers included), from /proc."""

from __future__ import annotations

from pathlib import Path

__all__ = ["descendants", "rss_of_tree"]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``; ones that exit meanwhile are left out."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


def rss_of_tree(pid: int) -> int:
    """VmRSS in KiB summed over ``pid`` and its descendants."""
    total = 0
    for entry in [pid, *descendants(pid)]:
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total
