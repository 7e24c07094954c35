"""Checks before a conversion touches anything: OUT is a folder we can write, remote storage answers in bounded
time, and OUT — if it lies inside SRC — is never scanned as input."""

from __future__ import annotations

import os
import threading
from typing import Any

from ..storage import Location, StorageError
from .base import ConversionError

__all__ = ["REACH_SECONDS", "check_destination", "excluded_paths", "probe"]

REACH_SECONDS = 15.0


def check_destination(out: Location) -> None:
    """OUT must be a folder (or not exist yet); a file there is an error naming it."""
    if out.is_local:
        if os.path.exists(out.root) and not os.path.isdir(out.root):
            raise ConversionError(f"OUT {out.display()} is a file, not a folder: give a folder path (it is created)")
        parent = out.root
        while parent and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if parent and not os.path.isdir(parent):
            raise ConversionError(f"OUT {out.display()} lies below {parent}, which is a file, not a folder")
        return
    if out.fs.isfile(out.root):
        raise ConversionError(f"OUT {out.display()} is an object, not a prefix: give a folder URL")


def probe(location: Location, seconds: float = REACH_SECONDS) -> None:
    """Ask remote storage one question with a hard deadline: an unreachable endpoint fails in ``seconds``, with one
    line, instead of retrying for minutes. Local paths need no probe."""
    if location.is_local or location.url.startswith("memory://"):
        return
    outcome: dict[str, Any] = {}

    def ask() -> None:
        try:  # guarded: the endpoint is marked as answered, and a wrong setting is explained in one line
            location.guarded(lambda: location.fs.info(location.root), "")
        except FileNotFoundError:
            pass  # reachable; the path (or an OUT bucket, made later) simply does not exist yet
        except Exception as error:
            outcome["error"] = error

    thread = threading.Thread(target=ask, name="storage-probe", daemon=True)  # a daemon: never delays exit
    thread.start()
    thread.join(seconds)
    endpoint = f" ({location.endpoint})" if location.settings.endpoint else ""
    if thread.is_alive():
        raise ConversionError(
            f"cannot reach {location.display()}{endpoint} within {seconds:.0f} s: check the endpoint "
            "(--storage-option endpoint_url=..., or AWS_ENDPOINT_URL) and the network"
        )
    error = outcome.get("error")
    if isinstance(error, StorageError):
        raise error  # one line already, naming the URL, the endpoint and what to check
    if error is not None:
        text = " ".join(str(error).split())[:200] or type(error).__name__
        raise ConversionError(f"cannot use {location.display()}{endpoint}: {type(error).__name__}: {text}") from error


def excluded_paths(out: Location) -> tuple[str, ...]:
    """OUT as the scanners see paths: its real path locally (links resolved), its key prefix remotely."""
    return (os.path.realpath(out.root),) if out.is_local else (out.root,)
