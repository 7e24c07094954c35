"""The saliency teacher as the stage holds it: refreshed from the training model between batches, never mid-batch.

Training copies its model's weights in (``offer``) from its own thread; the stage applies them (``apply_pending``)
before the next batch it augments. On CUDA the stage runs in a thread of its own, so the hand-over goes through a
lock and a CPU copy: the stage can never see a teacher half-loaded. The identity (a hash of the weights) that keys
every cached map and result is the one of the weights the next batch will use.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .providers import SaliencyProvider
from .saliency import weights_identity

__all__ = ["TeacherHandle"]


class TeacherHandle:
    """Holds the pending weights and the lock; ``every`` > 0 refreshes every N training steps (0: frozen)."""

    def __init__(self, provider: SaliencyProvider, every: int = 0) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"refresh_every must be a whole number ≥ 0 (0: a frozen teacher), got {every!r}")
        self.provider = provider
        self.every = every
        self._lock = threading.Lock()
        self._pending: dict[str, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"provider": self.provider, "every": self.every, "pending": self._pending}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.provider, self.every, self._pending = state["provider"], state["every"], state["pending"]
        self._lock = threading.Lock()

    @property
    def frozen(self) -> bool:
        return self.every <= 0

    def maybe_refresh(self, model: torch.nn.Module, step: int, every: int | None = None) -> bool:
        """Offer ``model``'s weights every ``every`` steps (default: the handle's own); True when it did."""
        every = self.every if every is None else every
        if every <= 0 or step == 0 or step % every:
            return False
        self.offer(model.state_dict())
        return True

    def offer(self, weights: dict[str, torch.Tensor]) -> None:
        """Take a CPU copy of ``weights`` now; the stage loads it before its next batch."""
        copy = {name: tensor.detach().to("cpu", copy=True) for name, tensor in weights.items()}
        with self._lock:
            self._pending = copy

    def apply_pending(self) -> bool:
        """Load offered weights, if any (the stage's thread, between batches); True when the teacher changed."""
        with self._lock:
            weights, self._pending = self._pending, None
        if weights is None:
            return False
        self.provider.refresh(weights)
        return True

    @property
    def identity(self) -> str:
        """The identity of the weights the next batch is augmented with (pending ones, if they wait)."""
        with self._lock:
            if self._pending is not None:
                return weights_identity(type(self.provider.teacher).__name__, self._pending)
        return self.provider.teacher_identity

    def state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of those weights (for checkpoints of a refreshed teacher)."""
        with self._lock:
            if self._pending is not None:
                return dict(self._pending)
        return {k: v.detach().to("cpu", copy=True) for k, v in self.provider.teacher.state_dict().items()}
