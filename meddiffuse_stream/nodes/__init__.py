"""The loader's stages, each a ``torchdata.nodes.BaseNode`` — compose your own graph from them.

``EpochSource`` (the epoch plan, one per pass) → ``Workers`` (the parallel stage: each worker runs a
``WorkerChain`` = ``ReadSamples`` → ``Decode`` → [``Conform``] → your stages (``Map``, ``ImageMap``, ``Filter``) →
``Batch``; without stages ``ReadSamples`` → ``DecodeBatch``, which decodes straight into shared batch memory) →
``ToTorch`` (tensors, pinning, device copy) → [``DeviceStage``] (augmentation).
``MedDiffuseLoader`` builds this graph (:func:`default_graph`); ``loader.root`` is its root node. Per-worker nodes
are one-in-one-out — a skipped or filtered sample travels on as a ``Skipped`` marker — so positions are sample
counts and every node resumes exactly from its state.
"""

from ..options import ConformOptions, ReadOptions, WorkerOptions
from .batch import Batch
from .chain import Stage, WorkerChain
from .conform import Conform
from .decode import DecodeOptions
from .decode_batch import DecodeBatch
from .device import DeviceStage
from .epochs import EpochSource, current_placement
from .errors import LoaderDataError, WorkerDiedError
from .graph import Graph, default_graph
from .items import PlannedSample, Skipped
from .plan import EpochPlan
from .read import ReadSamples
from .source import DatasetSource, open_dataset
from .stages import Decode, Filter, ImageMap, Map
from .to_torch import ToTorch, unit_float
from .transport.seeding import WorkerInfo, worker_info
from .workers import Workers

__all__ = [
    "Batch",
    "Conform",
    "ConformOptions",
    "DatasetSource",
    "Decode",
    "DecodeBatch",
    "DecodeOptions",
    "DeviceStage",
    "EpochPlan",
    "EpochSource",
    "Filter",
    "Graph",
    "ImageMap",
    "LoaderDataError",
    "Map",
    "PlannedSample",
    "ReadOptions",
    "ReadSamples",
    "Skipped",
    "Stage",
    "ToTorch",
    "WorkerChain",
    "WorkerDiedError",
    "WorkerInfo",
    "WorkerOptions",
    "Workers",
    "current_placement",
    "default_graph",
    "open_dataset",
    "unit_float",
    "worker_info",
]
