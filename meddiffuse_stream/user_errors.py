"""Failures of the environment — disk, permissions, network, storage options — as one line a user can act on.

Bugs are not translated: anything not recognised here keeps its traceback. Storage option values are never
repeated in a message (they may be secrets); only their names are.
"""

from __future__ import annotations

import difflib
import errno
import inspect
from collections.abc import Mapping
from typing import Any

__all__ = ["EXTRA_OF", "check_storage_options", "missing_extra", "one_line_error"]

_OS_ADVICE = {
    errno.ENOSPC: "no space left on the device: free space there or choose another OUT",
    errno.EDQUOT: "disk quota exceeded: free space there or choose another OUT",
    errno.EROFS: "read-only file system: choose a writable OUT",
    errno.EACCES: "permission denied: choose a folder you can write, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write, or fix its permissions",
    errno.ENOTDIR: "a path component is a file, not a folder",
    errno.EISDIR: "expected a file but found a folder",
    errno.EIO: "input/output error from the device or network file system",
    errno.ENAMETOOLONG: "a file name is too long for this file system",
}
_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "urllib3", "requests", "obstore", "s3fs", "gcsfs")


# an optional package -> the extra of meddiffuse-stream that installs it
EXTRA_OF = {
    "torch": "torch",
    "torchdata": "torch",
    "pyspng": "torch",
    "captum": "augment",
    "diffusers": "augment",
    "safetensors": "augment",
    "matplotlib": "augment",
    "sklearn": "torch",
    "scipy": "torch",
    "pydicom": "dicom",
    "data_store": "demo",
    "h5py": "hdf5",
    "s3fs": "s3",
    "obstore": "s3",
}


def missing_extra(error: BaseException) -> str | None:
    """For an import of an optional package that failed: which extra to install, in one line; else ``None``."""
    if not isinstance(error, ImportError):
        return None
    name = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRA_OF.get(name)
    if extra is None:
        return None
    return (
        f"this command needs {name}, which is not installed: install the '{extra}' extra, e.g. "
        f"pip install -e '.[{extra}]' in a clone (a CUDA torch installed before is kept)"
    )


def one_line_error(error: BaseException) -> str | None:
    """A one-line message for an environment failure, or ``None`` for anything else (a bug keeps its traceback)."""
    from concurrent.futures.process import BrokenProcessPool

    if isinstance(error, ImportError):
        return missing_extra(error)
    if isinstance(error, BrokenProcessPool):
        return "a worker process died (killed for memory?): run again with fewer --workers; finished shards are kept"
    if isinstance(error, MemoryError):
        return "out of memory: run again with fewer --workers, or lower --max-pixels"
    module = type(error).__module__ or ""
    if module.startswith(_NETWORK_MODULES) or isinstance(error, (ConnectionError, TimeoutError)):
        text = " ".join(str(error).split())[:300] or type(error).__name__
        return f"storage or network failure ({type(error).__name__}): {text}"
    if isinstance(error, OSError):
        where = f" ({error.filename})" if getattr(error, "filename", None) else ""
        advice = _OS_ADVICE.get(error.errno or -1)
        if advice:
            return f"{advice}{where}"
        text = " ".join(str(error.strerror or error).split())[:300]
        return f"{type(error).__name__}: {text}{where}"
    return None


def check_storage_options(url: str, options: Mapping[str, Any]) -> None:
    """Refuse option names the URL's filesystem does not take, naming them and never their values."""
    if not options:
        return
    import fsspec

    protocol = fsspec.utils.get_protocol(str(url))
    try:
        cls = fsspec.get_filesystem_class(protocol)
    except (ImportError, ValueError) as error:
        raise ValueError(
            f"{url}: no filesystem for {protocol}:// is installed ({type(error).__name__}); for S3 "
            "pip install 'meddiffuse-stream[s3]'"
        ) from None
    known = _accepted_options(cls)
    if known is None:
        return
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ValueError(
                f"--storage-option {name}: not an option of {cls.__module__}.{cls.__name__}{hint}; "
                "the value is not shown, it may be a secret"
            )


def _accepted_options(cls: type) -> set[str] | None:
    """Named parameters of the filesystem class; ``None`` where unknown names are forwarded somewhere we cannot see
    (then the filesystem itself reports them)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for parameter in inspect.signature(init).parameters.values():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY) and parameter.name != "self":
                names.add(parameter.name)
    if cls.__module__.startswith("s3fs"):  # s3fs forwards the rest to aiobotocore's session
        from aiobotocore.session import AioSession

        names |= {p for p in inspect.signature(AioSession.__init__).parameters if p != "self"}
        names |= {
            "use_listings_cache",
            "listings_expiry_time",
            "max_paths",
            "skip_instance_cache",
            "asynchronous",
            "loop",
        }
        return names
    return None
