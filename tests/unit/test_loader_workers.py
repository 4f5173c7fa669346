"""DataLoader workers, batches finished on the device, and the torch multi-hot expansion.

Whatever the number of workers, a split gives the same batches in the same
order, a resumed pass starts at batch k, and every rank gets as many batches;
a ``RawBatch`` finished by ``.to(device)`` equals the host-finished batch; the
torch expansion (run on GPUs) equals the numpy reference bit for bit.
"""

from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch

from dlrm_dist.config import DataConfig
from dlrm_dist.data import multi_hot
from dlrm_dist.data.batches import BatchSpec, RawBatch, make_batch
from dlrm_dist.data.build import build_data
from dlrm_dist.data.loader import make_loader
from dlrm_dist.training.distributed import DistEnv

CPU = torch.device("cpu")
TABLES = [50 + 7 * f for f in range(26)]
MULTI_HOT = [1 + f % 4 for f in range(26)]


def env(rank: int = 0, world: int = 1) -> DistEnv:
    return DistEnv(rank, world, rank, world, CPU, "gloo")


@pytest.fixture(scope="module")
def days(tmp_path_factory) -> Path:
    """Four small npy days in the preprocess layout (int64 ids beyond the tables)."""
    folder = tmp_path_factory.mktemp("npy")
    rng = np.random.default_rng(0)
    for day, rows in enumerate([150, 97, 120, 100]):
        np.save(folder / f"day_{day}_dense.npy", rng.random((rows, 13), dtype=np.float32))
        np.save(folder / f"day_{day}_sparse.npy", rng.integers(0, 2**32, (rows, 26)))
        np.save(folder / f"day_{day}_labels.npy", rng.integers(0, 2, (rows, 1), dtype=np.int32))
    return folder


def criteo(days: Path, rank: int = 0, world: int = 1, **cfg):
    return build_data(DataConfig(source="criteo", path=str(days), **cfg), 16, TABLES, env(rank, world)).train


def synthetic(rank: int = 0, world: int = 1, **cfg):
    return build_data(DataConfig(source="synthetic", train_samples=480, **cfg), 16, TABLES, env(rank, world)).train


def signature(batches) -> List[bytes]:
    """Each batch as bytes of its dense, ids, lengths and labels, once finished by
    ``.to(device)`` as TorchRec's pipelines do."""
    out = []
    for b in batches:
        b = b.to(CPU)
        kjt = b.sparse_features
        out.append(b"|".join(t.numpy().tobytes() for t in (b.dense_features, kjt.values(), kjt.lengths(),
                                                             b.labels)))
    return out


@pytest.mark.parametrize("source", ["criteo", "synthetic"])
@pytest.mark.parametrize("cfg", [{}, {"shuffle_batches": True, "shuffle_rows": True, "seed": 4},
                                 {"multi_hot_sizes": MULTI_HOT}])
def test_workers_give_the_same_batches_in_the_same_order(days, source, cfg):
    if source == "synthetic" and "shuffle_rows" in cfg:
        pytest.skip("synthetic data has no row order to shuffle")
    split = criteo(days, **cfg) if source == "criteo" else synthetic(**cfg)
    split.set_epoch(2)
    expected = signature(make_loader(split, CPU))
    assert len(expected) == len(split) > 3
    for workers in (2, 3):  # 3: the batches do not split evenly
        split.set_epoch(2)
        assert signature(make_loader(split, CPU, num_workers=workers)) == expected, f"{workers} workers"


@pytest.mark.parametrize("order", [{}, {"shuffle_batches": True}, {"shuffle_rows": True}])
def test_a_resumed_pass_with_workers_starts_at_batch_k_and_reads_only_its_batches(days, order):
    split = criteo(days, seed=9, **order)
    split.set_epoch(1)
    whole = signature(make_loader(split, CPU))
    split.set_epoch(1, start_batch=5)
    assert signature(make_loader(split, CPU, num_workers=2)) == whole[5:]
    # the next pass starts at batch 0 again (epoch 1 stays set)
    assert signature(make_loader(split, CPU, num_workers=2)) == whole
    # worker w of N reads only batches start + w, start + w + N, ...: rows of no other batch
    read = []
    take = split.take
    split.take = lambda rows, **kw: read.append(rows) or take(rows, **kw)  # type: ignore[method-assign]
    got = signature(split.batches(1, 5 + 1, 3))  # worker 1 of 3, resumed at batch 5
    assert got == whole[6::3] and len(read) == len(got)


def test_workers_on_cpu_send_finished_values_and_the_kjt_is_wrapped_by_to(days):
    split = criteo(days, multi_hot_sizes=MULTI_HOT)
    sent = next(iter(make_loader(split, CPU, num_workers=1)))
    assert isinstance(sent, RawBatch) and sent.ids is None  # hashed and expanded in the worker
    assert signature([sent]) == signature([next(iter(split))])


def test_every_rank_gets_as_many_batches_with_workers(days):
    # 367 training rows over 3 ranks x 16: 7 full batches each, the tail dropped
    counts = [len(list(make_loader(criteo(days, r, 3), CPU, num_workers=2))) for r in range(3)]
    assert counts == [len(criteo(days, r, 3)) for r in range(3)] == [7, 7, 7]


@pytest.mark.parametrize("distribution", ["uniform", "pareto"])
def test_torch_expansion_equals_the_numpy_reference_bit_for_bit(distribution):
    tables = [40_000_000, 39060, 3, 7, 2**31 + 11] + TABLES[5:]
    raw = np.random.default_rng(1).integers(0, 2**40, size=(300, 26))
    hashed = raw % np.array(tables)
    sizes = [3, 2, 1, 100] + MULTI_HOT[4:]
    reference = make_batch(np.zeros((300, 13), np.float32),
                           multi_hot.expand_all(hashed, tables, sizes, distribution, 7), np.zeros(300))
    spec = BatchSpec(tables, sizes, distribution, seed=7)
    on_device = spec.device_values(torch.from_numpy(raw))  # the GPU code path, run on the CPU here
    on_host = spec.finish(torch.zeros(300, 13), torch.from_numpy(raw), torch.zeros(300)).sparse_features
    assert torch.equal(on_device, reference.sparse_features.values())
    assert torch.equal(on_host.values(), reference.sparse_features.values())
    assert on_host.lengths().tolist() == reference.sparse_features.lengths().tolist()
    assert on_host.offsets().tolist() == reference.sparse_features.offsets().tolist()


def test_a_batch_finished_on_the_device_equals_one_finished_on_the_host(days):
    split = criteo(days, multi_hot_sizes=MULTI_HOT)
    host = next(iter(split))
    split.deliver = "raw_ids"
    raw = next(iter(split))
    assert isinstance(raw, RawBatch) and raw.ids.shape == (16, 26)  # as stored: one id per feature
    assert signature([raw.to(CPU)]) == signature([host])
    assert all(int(v.values().max()) < TABLES[f] for f, v in enumerate(host.sparse_features.to_dict().values()))


def test_ids_stored_as_int32_or_int64_hash_alike_negative_ones_too():
    """``--max-ind-range`` days store int32 ids, hashed in 32 bits on the host."""
    raw = np.random.default_rng(2).integers(-2**31, 2**31, size=(64, 26))
    spec = BatchSpec(TABLES)
    expected = (raw % np.array(TABLES)).T.reshape(-1)
    for stored in (raw, raw.astype(np.int32)):
        np.testing.assert_array_equal(spec.values(torch.from_numpy(stored)).numpy(), expected)
    np.testing.assert_array_equal(spec.device_values(torch.from_numpy(raw)).numpy(), expected)


# Devices whose finish path runs here: the meta device stands in for a GPU (the
# CUDA path's host side, no kernels run); a GPU host runs the real one too.
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("workers", [0, 2])
def test_per_size_constants_are_built_once_per_split_and_device(days, device, workers):
    """Batches from workers come back with the training process's own spec, so the
    KJT's lengths / offsets (and the multi-hot gather index the spec's expander
    holds) are built once, not for every batch; finished batches are right-shaped."""
    dev = torch.device(device)
    split = criteo(days, multi_hot_sizes=MULTI_HOT)
    assert split.spec.builds == 0
    got = 0
    for epoch in range(2):  # a second pass reuses them too
        split.set_epoch(epoch)
        for raw in make_loader(split, dev, num_workers=workers):
            assert isinstance(raw, RawBatch) or workers == 0 and device == "cpu"
            if isinstance(raw, RawBatch):
                assert raw.spec is split.spec
                assert (raw.ids is not None) == (device != "cpu")  # ids as stored go to the device
                if device == "cuda":
                    assert raw.ids.is_pinned()  # so the pipeline's copy is asynchronous
            batch = raw.to(dev)  # what TorchRec's pipeline does on its copy stream
            kjt = batch.sparse_features
            assert kjt.values().device.type == device and kjt.values().numel() == 16 * sum(MULTI_HOT)
            assert kjt.lengths().shape == (16 * 26,) and kjt.offsets().shape == (16 * 26 + 1,)
            got += 1
    assert got == 2 * len(split) > 3
    # one set per (batch size, device), in the training process (before: one per batch with workers)
    assert split.spec.builds == 1


def test_a_spawned_worker_rebuilds_the_spec_by_name():
    """A process without the spec (a spawned worker) builds it from its definition,
    under the same name, so the batches it sends back find the original."""
    import pickle

    from dlrm_dist.data import batches

    spec = BatchSpec(TABLES, MULTI_HOT, seed=3)
    assert pickle.loads(pickle.dumps(spec)) is spec
    token, definition = spec.__reduce__()[1]
    other = batches._shared_spec("never-seen", definition)  # as in a fresh process
    assert other is not spec and other.definition == spec.definition
    assert pickle.loads(pickle.dumps(other)) is other


def test_a_raw_batch_crosses_processes_as_one_buffer(days):
    """What a worker sends: one byte buffer (one shared-memory hand-off, not one per
    tensor) that unpickles into the same tensors, with the receiving process's spec."""
    import pickle

    split = criteo(days, multi_hot_sizes=MULTI_HOT)
    split.deliver = "raw_ids"
    raw = next(iter(split))
    for sent in (raw, raw.with_values()):  # a GPU job's ids as stored; a CPU job's finished values
        fn, (packed, _layout, _spec) = sent.__reduce__()
        assert packed.dtype == torch.uint8 and packed.dim() == 1
        back = pickle.loads(pickle.dumps(sent))
        assert back.spec is split.spec
        for a, b in zip(sent._tensors(), back._tensors()):
            assert a.dtype == b.dtype and torch.equal(a, b)
        assert signature([back]) == signature([sent])
