"""One save/load-state contract, run over every stage."""

import pytest
from loader_helpers import check_state_contract, uneven_dataset

from meddiffuse_stream.counters import Counters
from meddiffuse_stream.nodes.chunks import ChunkBuilder, StageConfig
from meddiffuse_stream.nodes.decode import DecodeOptions
from meddiffuse_stream.nodes.plan import EpochPlan
from meddiffuse_stream.nodes.reader import PlannedSampleReader
from meddiffuse_stream.nodes.source import open_dataset
from meddiffuse_stream.nodes.workers import WorkerPool


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    source = open_dataset(str(uneven_dataset(tmp_path_factory.mktemp("c"))), "train")
    plan = EpochPlan(tuple(s.samples for s in source.shards), 8, seed=3, num_workers=2, buffer_size=16)
    return StageConfig(source, plan, DecodeOptions(num_classes=2))


def test_reader_contract(config):
    refs = config.plan.worker_refs(1)
    check_state_contract(lambda: PlannedSampleReader(config.source, refs, counters=Counters()), [0, 5, len(refs)])


def test_chunk_builder_contract(config):
    check_state_contract(lambda: ChunkBuilder(config, 0), [0, 2, 7])


@pytest.mark.parametrize("method", ["thread", "process"])
def test_worker_pool_contract(config, method):
    pools = []

    def make():
        pools.append(WorkerPool(config, method=method))
        return pools[-1]

    check_state_contract(make, [0, 3, config.plan.num_batches])
    for pool in pools:
        pool.close()


def test_inline_pool_contract_and_next_epoch(config):
    import dataclasses

    inline = dataclasses.replace(config, plan=dataclasses.replace(config.plan, num_workers=0))
    check_state_contract(lambda: WorkerPool(inline), [0, 4, inline.plan.num_batches])
    pool = WorkerPool(inline)
    pool.reset({"epoch": 1, "batches": 0})
    epoch1 = [list(c["key"]) for c in pool]
    pool.reset({"epoch": 1, "batches": 2})
    assert [list(c["key"]) for c in pool] == epoch1[2:]
