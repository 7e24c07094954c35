"""What the transport needs of a worker chain: to be copied into a worker and built per epoch command."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from torchdata.nodes import BaseNode

from ...counters import Counters
from ..plan import EpochPlan
from .seeding import WorkerSeeds

__all__ = ["BuildsWorkerNodes"]


class BuildsWorkerNodes(Protocol):
    """A :class:`~meddiffuse_stream.nodes.WorkerChain`, seen from the transport (which must not import it)."""

    @property
    def source(self) -> Any: ...  # what get_worker_info().dataset names

    def build(
        self,
        plan: EpochPlan,
        worker: int,
        start: int = 0,
        counters: Counters | None = None,
        allocate: Callable[..., Any] | None = None,
        seeds: WorkerSeeds | None = None,
    ) -> BaseNode[Any]: ...
