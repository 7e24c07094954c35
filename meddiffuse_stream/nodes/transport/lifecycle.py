"""Worker processes that never outlive their loader and never hold up an exit.

- A forked worker inherits the parent's Python signal handlers (Lightning installs one for SIGTERM that only sets a
  flag): :func:`restore_default_signals` puts the defaults back, so ``terminate()`` ends it; SIGINT is ignored, the
  parent handles Ctrl-C and closes its workers.
- :func:`die_with_parent`: the Linux parent-death signal (SIGKILL when the forking thread ends — so only used when
  the main thread forks) and a watchdog thread that exits when the parent is gone, on every platform.
- :func:`close_at_exit`: loaders still open at interpreter exit are closed by an ``atexit`` hook registered after
  multiprocessing's own, so it runs first and multiprocessing's exit join finds no worker left to wait for.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import multiprocessing.util  # noqa: F401 - imported first, so its exit hook runs after ours (atexit is LIFO)
import os
import signal
import sys
import threading
import time
import weakref
from typing import Any

__all__ = ["close_at_exit", "die_with_parent", "restore_default_signals"]

_PR_SET_PDEATHSIG = 1
_WATCH_SECONDS = 0.5
_open: weakref.WeakSet[Any] = weakref.WeakSet()


def restore_default_signals() -> None:
    """Python-level handlers inherited from the parent back to the defaults; SIGINT ignored."""
    for signum in signal.valid_signals():
        try:
            if callable(signal.getsignal(signum)):
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError, TypeError):  # not settable here (SIGKILL, SIGSTOP, ...)
            continue
    with contextlib.suppress(OSError, ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pdeathsig() -> None:
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)


def _parent_alive(parent_pid: int, first_ppid: int) -> bool:
    if os.getppid() != first_ppid:  # re-parented: the process that started us is gone
        return False
    try:
        os.kill(parent_pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid: int, use_pdeathsig: bool) -> None:
    """End this process when ``parent_pid`` ends: at once by signal on Linux, else within half a second."""
    first_ppid = os.getppid()
    if use_pdeathsig and sys.platform.startswith("linux") and first_ppid == parent_pid:
        _pdeathsig()
    if not _parent_alive(parent_pid, first_ppid):
        os._exit(1)

    def watch() -> None:
        while _parent_alive(parent_pid, first_ppid):
            time.sleep(_WATCH_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="meddiffuse-parent-watchdog", daemon=True).start()


def close_at_exit(resource: Any) -> None:
    """Close ``resource`` (anything with ``close()``) at interpreter exit if it is still alive then."""
    _open.add(resource)


def _close_all() -> None:
    for resource in list(_open):
        with contextlib.suppress(Exception):
            resource.close()


atexit.register(_close_all)
