"""Loader stages in the ``torchdata.nodes`` style: plan, read, decode, collate, workers.

The per-worker stages follow the node contract (``reset(state)`` / ``get_state()`` / ``next()``) without importing
torch, so worker processes start fast; :class:`~meddiffuse_stream.nodes.workers.WorkerPool` is a
``torchdata.nodes.BaseNode``.
"""
