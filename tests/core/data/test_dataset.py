"""The sharded slice-dataset format: writing, lazy reading, checksums, and reading straight from S3."""
import json

import numpy as np
import pytest

from augpaint_core.infra.artifacts import atomic_dir, write_artifact_meta
from augpaint_core.data.dataset import DatasetWriter, ShardedArray, SliceDataset, load_dataset, open_dataset, save_dataset
from augpaint_core.errors import AugPaintError


def _records(n, split="train"):
    return [{"case_id": f"c{i // 3}", "slice_index": i % 3, "split": split, "labeled": True, "source": "real",
             "provenance": {"i": i}} for i in range(n)]


def _make(tmp_path, n=23, shard_size=5, name="ds"):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (n, 8, 8), dtype=np.uint8)
    out = tmp_path / name
    with atomic_dir(out) as tmp:
        save_dataset(SliceDataset(images, labels, _records(n), ["A", "B"], {"AB": [1, 2]}), tmp,
                     shard_size=shard_size)
        write_artifact_meta(tmp, kind="dataset", stage="test", config=None, seed=0)
    return out, images, labels


def test_shards_manifest_and_roundtrip(tmp_path):
    out, images, labels = _make(tmp_path)
    m = json.loads((out / "manifest.json").read_text())
    assert m["schema_version"] == 2 and m["class_names"] == ["A", "B"] and m["regions"] == {"AB": [1, 2]}
    assert [s["num_slices"] for s in m["shards"]] == [5, 5, 5, 5, 3]
    assert all(len(s["images_sha256"]) == 64 for s in m["shards"])
    assert len(m["records"]) == 23 and m["records"][7]["provenance"] == {"i": 7}
    ds = open_dataset(out)
    assert isinstance(ds.images, ShardedArray) and ds.images.shape == (23, 8, 8, 3)
    assert np.array_equal(np.asarray(ds.images), images) and np.array_equal(np.asarray(ds.labels), labels)
    assert ds.regions == {"AB": [1, 2]} and ds.num_classes == 3


@pytest.mark.parametrize("key", [4, -1, slice(3, 17, 2), slice(None), [22, 0, 6, 6, 11], np.array([], np.int64)])
def test_sharded_indexing_matches_numpy(tmp_path, key):
    out, images, labels = _make(tmp_path)
    ds = open_dataset(out)
    assert np.array_equal(ds.images[key], images[key]) and np.array_equal(ds.labels[key], labels[key])
    mask = np.zeros(23, bool)
    mask[[1, 9, 21]] = True
    assert np.array_equal(ds.images[mask], images[mask])
    assert np.array_equal(ds.labels[[2, 13], 1:4], labels[[2, 13], 1:4])
    with pytest.raises(IndexError):
        ds.images[[23]]


def test_only_touched_shards_are_read(tmp_path):
    out, images, _ = _make(tmp_path)
    with open(out / "shards" / "images-00003.npy", "r+b") as f:  # corrupt shard 3 (slices 15..19)
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    ds = open_dataset(out)
    assert np.array_equal(ds.images[[0, 7, 21]], images[[0, 7, 21]])  # other shards still readable
    with pytest.raises(AugPaintError, match="images-00003.npy: checksum mismatch"):
        ds.images[16]


def test_incomplete_or_foreign_artifacts_are_rejected(tmp_path):
    w = DatasetWriter(tmp_path / "half", ["A"], 8, shard_size=4)
    w.add(np.zeros((6, 8, 8, 3), np.uint8), np.zeros((6, 8, 8), np.uint8), _records(6))
    w.close()  # a manifest but no artifact.json: the stage never finished
    with pytest.raises(AugPaintError, match="not a complete dataset artifact"):
        load_dataset(tmp_path / "half")
    with pytest.raises(AugPaintError, match="not found"):
        load_dataset(tmp_path / "missing")
    out, _, _ = _make(tmp_path)
    (out / "shards" / "labels-00001.npy").unlink()
    with pytest.raises(AugPaintError, match="labels-00001.npy: shard missing"):
        load_dataset(out)


def test_writer_validates_input(tmp_path):
    w = DatasetWriter(tmp_path / "w", ["A"], 8)
    with pytest.raises(AugPaintError, match="images"):
        w.add(np.zeros((2, 8, 8), np.uint8), np.zeros((2, 8, 8), np.uint8), _records(2))
    with pytest.raises(AugPaintError, match="label value 2 > 1 classes"):
        w.add(np.zeros((1, 8, 8, 3), np.uint8), np.full((1, 8, 8), 2, np.uint8), _records(1))
    with pytest.raises(AugPaintError, match="lacks"):
        w.add(np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8), np.uint8), [{"case_id": "x"}])


def test_writer_memory_is_one_shard(tmp_path):
    # Many small adds never hold more than the shard buffer: shards appear on disk as they fill.
    w = DatasetWriter(tmp_path / "w", ["A"], 8, shard_size=4)
    for i in range(9):
        w.add(np.full((1, 8, 8, 3), i, np.uint8), np.zeros((1, 8, 8), np.uint8), _records(1))
        assert len(list((tmp_path / "w" / "shards").glob("images-*.npy"))) == (i + 1) // 4
    w.close()
    assert len(list((tmp_path / "w" / "shards").glob("images-*.npy"))) == 3


def test_read_straight_from_s3(s3_bucket, tmp_path):
    from augpaint_core.infra import storage

    out, images, labels = _make(tmp_path)
    uri = f"s3://{s3_bucket}/datasets/v1"
    storage.upload_dir(out, uri)
    cache = tmp_path / "cache"
    ds = open_dataset(uri, cache_dir=cache)
    assert ds.records == load_dataset(out).records and ds.regions == {"AB": [1, 2]}
    assert np.array_equal(ds.images[[21, 2]], images[[21, 2]])
    assert len(list(cache.rglob("*"))) and len([p for p in cache.rglob("*") if p.is_file()]) == 2  # 2 shards
    assert np.array_equal(np.asarray(ds.labels), labels)
    # A prefix without artifact.json (an interrupted upload) is not a dataset.
    storage.upload_file(out / "manifest.json", f"s3://{s3_bucket}/datasets/partial/manifest.json")
    with pytest.raises(AugPaintError, match="not a complete dataset artifact"):
        open_dataset(f"s3://{s3_bucket}/datasets/partial")


def test_indexed_view_reads_like_a_concatenation_without_loading(tmp_path):
    from augpaint_core.data.dataset import IndexedView

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 255, (7, 4, 4, 3), dtype=np.uint8), rng.integers(0, 255, (3, 4, 4, 3), dtype=np.uint8)
    rows = np.array([5, 1, 6])
    v = IndexedView([(a, rows), (b, None)])
    want = np.concatenate([a[rows], b])
    assert v.shape == want.shape and v.dtype == want.dtype and len(v) == 6
    assert np.array_equal(v[np.array([4, 0, 5, 2, 2])], want[[4, 0, 5, 2, 2]])
    assert np.array_equal(v[1:5], want[1:5]) and np.array_equal(v[-1], want[-1]) and np.array_equal(np.asarray(v), want)
    with pytest.raises(IndexError):
        v[np.array([6])]


def test_batch_loader_yields_the_index_batches_in_order_with_workers(tmp_path):
    import torch

    from augpaint_core.data.dataset import BatchReader, batch_loader

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (10, 4, 4, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, (10, 4, 4), dtype=np.uint8)
    order = [np.array([3, 1]), np.array([9, 0]), np.array([4, 4])]
    for workers in (0, 2):
        got = list(batch_loader(BatchReader(images, labels), iter(order), workers=workers))
        assert len(got) == 3
        for (x, y), idx in zip(got, order):
            assert x.dtype == torch.uint8 and np.array_equal(x.numpy(), images[idx])
            assert np.array_equal(y.numpy(), labels[idx])
    before = torch.get_rng_state()
    list(batch_loader(BatchReader(images), iter(order)))
    assert torch.equal(before, torch.get_rng_state())  # building a loader leaves the global RNG (dropout) alone
