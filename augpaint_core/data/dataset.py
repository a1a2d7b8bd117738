"""The slice-dataset artifact: sharded, memory-mappable arrays plus a manifest.

Layout of a dataset folder (local, or the same keys under an ``s3://`` prefix)::

    manifest.json            schema version, class names, regions, shard table, one record per slice
    shards/images-00000.npy  (n, H, W, 3) uint8
    shards/labels-00000.npy  (n, H, W) uint8
    artifact.json            provenance (config, versions, input hashes), written last

Writers stream: a shard is written as soon as ``shard_size`` slices are buffered,
so preprocessing BraTS-scale data (about 15 GB of images) needs one shard of
memory. Readers memory-map shards and verify a shard's sha256 the first time it
is touched, so reading a few slices of a large dataset touches only their shards.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

import hashlib

from ..infra.artifacts import ARTIFACT_FILE, files_digest, sha256_file
from ..errors import AugPaintError

DATASET_SCHEMA = 2
MANIFEST = "manifest.json"
RECORD_FIELDS = ("case_id", "slice_index", "split", "labeled", "source", "provenance")


class ShardedArray:
    """Read-only array view over per-shard arrays, loaded on first use.

    Supports what the stages need: ``shape``, ``dtype``, ``len``, integer,
    slice, integer-array and boolean-mask indexing (result is an in-memory
    ndarray), and ``np.asarray`` (materialises everything).
    """

    def __init__(self, counts: list[int], tail: tuple[int, ...], dtype: np.dtype,
                 opener: Callable[[int], np.ndarray]) -> None:
        self._counts = list(counts)
        self._starts = np.concatenate([[0], np.cumsum(self._counts)]).astype(np.int64)
        self._tail = tuple(tail)
        self.dtype = np.dtype(dtype)
        self._opener = opener
        self._open: dict[int, np.ndarray] = {}

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self._tail)

    @property
    def ndim(self) -> int:
        return 1 + len(self._tail)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, s: int) -> np.ndarray:
        if s not in self._open:
            arr = self._opener(s)
            if arr.shape != (self._counts[s], *self._tail) or arr.dtype != self.dtype:
                raise AugPaintError(f"shard {s}: shape {arr.shape} {arr.dtype} does not match the manifest "
                                    f"({self._counts[s]}, {self._tail}) {self.dtype}")
            self._open[s] = arr
        return self._open[s]

    def _gather(self, idx: np.ndarray) -> np.ndarray:
        n = len(self)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} slices")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, *self._tail), self.dtype)
        shard_of = np.searchsorted(self._starts, idx, side="right") - 1
        for s in np.unique(shard_of):
            sel = np.nonzero(shard_of == s)[0]
            local = idx[sel] - self._starts[s]
            order = np.argsort(local, kind="stable")  # memmaps read fastest in file order
            out[sel[order]] = self._shard(int(s))[local[order]]
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):  # e.g. labels[idx, 3:5]: select slices lazily, the rest in memory
            first, rest = key[0], key[1:]
            out = self[first]
            return out[rest] if isinstance(first, (int, np.integer)) else out[(slice(None), *rest)]
        if isinstance(key, (int, np.integer)):
            return self._gather(np.array([int(key)]))[0]
        if isinstance(key, slice):
            return self._gather(np.arange(len(self))[key])
        idx = np.asarray(key)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise IndexError(f"boolean index of shape {idx.shape} for {len(self)} slices")
            idx = np.nonzero(idx)[0]
        return self._gather(idx.astype(np.int64).reshape(-1))

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self._gather(np.arange(len(self)))
        return out.astype(dtype) if dtype is not None else out


@dataclass
class SliceDataset:
    """A slice dataset, in memory or backed by shards.

    ``records`` hold per slice: case_id, slice_index, split (train/val/test),
    labeled (bool), source (real/synthetic) and a ``provenance`` dict.
    Labels of unlabeled training slices are all zero and must not be used.
    ``regions`` names evaluation regions as unions of classes (BraTS WT/TC/ET).
    """

    images: np.ndarray | ShardedArray
    labels: np.ndarray | ShardedArray
    records: list[dict[str, Any]]
    class_names: list[str]
    regions: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.records)
        if self.images.shape[0] != n or self.labels.shape[0] != n:
            raise AugPaintError(f"dataset: {self.images.shape[0]} images, {self.labels.shape[0]} labels, {n} records")
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise AugPaintError(f"dataset: images must be (N,H,W,3) uint8, got {self.images.shape} {self.images.dtype}")

    @property
    def num_classes(self) -> int:
        """Number of classes including background."""
        return len(self.class_names) + 1

    def select(self, idx: list[int] | np.ndarray) -> "SliceDataset":
        """An in-memory subset."""
        idx = np.asarray(idx, dtype=np.int64)
        return SliceDataset(self.images[idx], self.labels[idx], [self.records[i] for i in idx], self.class_names,
                            self.regions)

    def where(self, **match: Any) -> np.ndarray:
        """Indices of records whose fields equal all given values."""
        return np.array([i for i, r in enumerate(self.records) if all(r.get(k) == v for k, v in match.items())],
                        dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# Writing


class DatasetWriter:
    """Stream slices into shards; ``close()`` writes the manifest.

    Args:
        folder: the (temporary) artifact folder.
        class_names: foreground class names, label value k is ``class_names[k-1]``.
        image_size: H = W of every slice.
        shard_size: slices per shard.
        regions: optional evaluation regions.
        info: extra manifest fields (dataset name, format, report).
    """

    def __init__(self, folder: str | Path, class_names: list[str], image_size: int, *, shard_size: int = 512,
                 regions: dict[str, list[int]] | None = None, info: dict | None = None) -> None:
        self.folder = Path(folder)
        (self.folder / "shards").mkdir(parents=True, exist_ok=True)
        self.class_names, self.size, self.shard_size = list(class_names), int(image_size), int(shard_size)
        self.regions, self.info = dict(regions or {}), dict(info or {})
        self._img = np.empty((self.shard_size, self.size, self.size, 3), np.uint8)
        self._lab = np.empty((self.shard_size, self.size, self.size), np.uint8)
        self._fill = 0
        self.records: list[dict] = []
        self.shards: list[dict] = []

    def add(self, images: np.ndarray, labels: np.ndarray, records: list[dict]) -> None:
        """Append slices: images (n, H, W, 3) uint8, labels (n, H, W) uint8, n records."""
        n = len(records)
        if images.shape != (n, self.size, self.size, 3) or images.dtype != np.uint8:
            raise AugPaintError(f"dataset writer: images {images.shape} {images.dtype}, expected "
                                f"({n}, {self.size}, {self.size}, 3) uint8")
        if labels.shape != (n, self.size, self.size):
            raise AugPaintError(f"dataset writer: labels {labels.shape}, expected ({n}, {self.size}, {self.size})")
        if labels.size and int(labels.max()) > len(self.class_names):
            raise AugPaintError(f"dataset writer: label value {int(labels.max())} > {len(self.class_names)} classes")
        for r in records:
            missing = [k for k in RECORD_FIELDS if k not in r]
            if missing:
                raise AugPaintError(f"dataset writer: record {r} lacks {missing}")
        self.records.extend(records)
        i = 0
        while i < n:
            take = min(n - i, self.shard_size - self._fill)
            self._img[self._fill:self._fill + take] = images[i:i + take]
            self._lab[self._fill:self._fill + take] = labels[i:i + take]
            self._fill += take
            i += take
            if self._fill == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        k = len(self.shards)
        entry = {"num_slices": self._fill, "start": sum(s["num_slices"] for s in self.shards)}
        for name, buf in (("images", self._img), ("labels", self._lab)):
            rel = f"shards/{name}-{k:05d}.npy"
            np.save(self.folder / rel, buf[:self._fill])
            entry[name] = rel
            entry[f"{name}_sha256"] = sha256_file(self.folder / rel)
        self.shards.append(entry)
        self._fill = 0

    def close(self) -> dict:
        """Flush the last shard and write ``manifest.json``; returns the manifest."""
        self._flush()
        manifest = {"schema_version": DATASET_SCHEMA, "class_names": self.class_names, "regions": self.regions,
                    "image_size": self.size, "num_slices": len(self.records), "shards": self.shards,
                    **self.info, "records": self.records}
        (self.folder / MANIFEST).write_text(json.dumps(manifest))
        return manifest


def save_dataset(ds: SliceDataset, folder: str | Path, *, shard_size: int = 512, info: dict | None = None) -> dict:
    """Write an in-memory (or sharded) dataset into ``folder``."""
    w = DatasetWriter(folder, ds.class_names, ds.images.shape[1], shard_size=shard_size, regions=ds.regions,
                      info=info)
    for a in range(0, len(ds.records), shard_size):
        idx = np.arange(a, min(a + shard_size, len(ds.records)))
        w.add(np.asarray(ds.images[idx]), np.asarray(ds.labels[idx]), ds.records[a:idx[-1] + 1])
    return w.close()


# ----------------------------------------------------------------------------------------------
# Reading


def shard_hashes(manifest: dict) -> dict[str, str]:
    """Relative path -> sha256 of every shard, as recorded while writing."""
    return {s[k]: s[f"{k}_sha256"] for s in manifest["shards"] for k in ("images", "labels")}


def _verified_local(path: Path, digest: str, verify: bool) -> np.ndarray:
    if not path.is_file():
        raise AugPaintError(f"{path}: shard missing; the dataset artifact is incomplete")
    if verify and sha256_file(path) != digest:
        raise AugPaintError(f"{path}: checksum mismatch; the dataset artifact is corrupt")
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as err:
        raise AugPaintError(f"{path}: unreadable shard ({err})") from None


def _json_object(data: bytes, where: str) -> dict:
    try:
        out = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise AugPaintError(f"{where}: corrupt, not JSON ({str(err)[:200]})") from None
    if not isinstance(out, dict):
        raise AugPaintError(f"{where}: corrupt, expected a JSON object")
    return out


def _check_manifest(m: dict, where: str, recorded: dict[str, str]) -> None:
    """Shape of a manifest, shard paths inside the artifact, shard hashes as recorded in artifact.json."""
    from ..infra.storage import safe_relpath

    def bad(field: str, why: str) -> AugPaintError:
        return AugPaintError(f"{where}: field '{field}' {why}")

    for key, typ in (("shards", list), ("records", list), ("class_names", list)):
        if not isinstance(m.get(key), typ):
            raise bad(key, f"is missing or not a {typ.__name__}")
    for key in ("image_size", "num_slices"):
        if not isinstance(m.get(key), int) or isinstance(m.get(key), bool) or m[key] < (1 if key == "image_size" else 0):
            raise bad(key, f"must be a positive integer, got {m.get(key)!r}")
    if not all(isinstance(c, str) for c in m["class_names"]):
        raise bad("class_names", "must list names")
    if not isinstance(m.get("regions", {}), dict):
        raise bad("regions", "must map names to class lists")
    for i, sh in enumerate(m["shards"]):
        if not isinstance(sh, dict) or not isinstance(sh.get("num_slices"), int) or sh["num_slices"] < 0:
            raise bad(f"shards[{i}]", "is malformed (needs num_slices, images, labels and their sha256)")
        for k in ("images", "labels"):
            rel = safe_relpath(sh.get(k), f"{where}: shards[{i}].{k}")
            if not isinstance(sh.get(f"{k}_sha256"), str):
                raise bad(f"shards[{i}].{k}_sha256", "is missing")
            if recorded.get(rel) != sh[f"{k}_sha256"]:
                raise bad(f"shards[{i}].{k}_sha256", f"does not match the hash of {rel} in {ARTIFACT_FILE}")
    for i, r in enumerate(m["records"]):
        if not isinstance(r, dict) or any(k not in r for k in RECORD_FIELDS) or not isinstance(r["provenance"], dict):
            raise bad(f"records[{i}]", f"is malformed (needs {', '.join(RECORD_FIELDS)})")


def read_manifest(uri: str | Path) -> dict:
    """The manifest of a complete dataset artifact (local folder or ``s3://`` prefix).

    ``manifest.json`` is checked against the sha256 that ``artifact.json`` records, and its
    shard table against the recorded shard hashes, so an edited manifest (a test patient turned
    into training data, a shard path outside the folder) is refused.
    """
    from ..infra import storage

    uri = str(uri)
    meta_uri, man_uri = storage.join(uri, ARTIFACT_FILE), storage.join(uri, MANIFEST)
    if not storage.exists(meta_uri):
        if not storage.is_s3(uri) and not Path(uri).is_dir():
            raise AugPaintError(f"{uri}: dataset not found")
        raise AugPaintError(f"{uri}: not a complete dataset artifact (no {ARTIFACT_FILE}); was its stage "
                            f"interrupted?")
    meta = _json_object(storage.read_bytes(meta_uri), meta_uri)
    if meta.get("kind") != "dataset":
        raise AugPaintError(f"{uri}: expected a dataset artifact, found {meta.get('kind')!r}")
    files = meta.get("files")
    if not isinstance(files, dict) or files_digest(files) != meta.get("content_sha256"):
        raise AugPaintError(f"{meta_uri}: field 'files' is missing or does not match content_sha256; the artifact "
                            f"was edited or is corrupt")
    raw = storage.read_bytes(man_uri)
    if hashlib.sha256(raw).hexdigest() != files.get(MANIFEST):
        raise AugPaintError(f"{man_uri}: sha256 does not match {ARTIFACT_FILE}; the manifest was edited or is corrupt")
    manifest = _json_object(raw, man_uri)
    if manifest.get("schema_version") != DATASET_SCHEMA:
        raise AugPaintError(f"{uri}: dataset schema {manifest.get('schema_version')} is not {DATASET_SCHEMA}; "
                            f"re-run preprocess with this version")
    _check_manifest(manifest, man_uri, files)
    return manifest


def require_provenance(ds: "SliceDataset", keys: tuple[str, ...], where: str | Path, what: str) -> None:
    """Refuse a dataset whose records lack provenance fields a stage needs (e.g. a real dataset given as
    ``--synthetic``)."""
    for r in ds.records:
        missing = [k for k in keys if k not in r.get("provenance", {})]
        if missing:
            raise AugPaintError(f"{where}: not {what} (record {r.get('case_id')!r} slice {r.get('slice_index')} has "
                                f"no provenance {', '.join(missing)})")


def open_dataset(uri: str | Path, *, verify: bool = True, cache_dir: str | Path | None = None) -> SliceDataset:
    """Open a dataset artifact lazily; shards are memory-mapped on first use.

    Args:
        uri: a local folder or an ``s3://bucket/prefix`` (shards are fetched into a
            content-addressed local cache, then memory-mapped).
        verify: check each shard's sha256 before first use.
        cache_dir: cache for S3 shards (default ``$AUGPAINT_CACHE`` or ``~/.cache/augpaint``).
    """
    from ..infra import storage

    m = read_manifest(uri)
    uri = str(uri)
    shards = m["shards"]

    def opener(name: str) -> Callable[[int], np.ndarray]:
        def open_shard(s: int) -> np.ndarray:
            entry = shards[s]
            rel, digest = entry[name], entry[f"{name}_sha256"]
            if storage.is_s3(uri):
                local = storage.cached_copy(storage.join(uri, rel), digest, cache_dir)
                return _verified_local(Path(local), digest, False)  # cached_copy verified it
            return _verified_local(Path(uri) / rel, digest, verify)
        return open_shard

    counts = [s["num_slices"] for s in shards]
    if sum(counts) != len(m["records"]) or m["num_slices"] != len(m["records"]):
        raise AugPaintError(f"{uri}: manifest lists {len(m['records'])} records but {sum(counts)} slices in shards")
    size = m["image_size"]
    return SliceDataset(ShardedArray(counts, (size, size, 3), np.uint8, opener("images")),
                        ShardedArray(counts, (size, size), np.uint8, opener("labels")),
                        m["records"], m["class_names"], {k: list(v) for k, v in m.get("regions", {}).items()})


class IndexedView:
    """A lazy concatenation of row subsets of several arrays (ndarray or :class:`ShardedArray`).

    ``IndexedView([(ds.images, train_idx), (syn.images, None)])`` behaves like
    ``np.concatenate([ds.images[train_idx], syn.images])`` for ``len``, ``shape``, ``dtype`` and integer,
    slice and integer-array indexing, without reading any row before it is asked for.

    Args:
        parts: (array, row indices or None for all rows) pairs with equal trailing shapes and dtypes.
    """

    def __init__(self, parts: list[tuple[Any, np.ndarray | None]]) -> None:
        if not parts:
            raise AugPaintError("IndexedView: no parts")
        self._arrays = [a for a, _ in parts]
        self._rows = [np.arange(len(a), dtype=np.int64) if i is None else np.asarray(i, np.int64) for a, i in parts]
        tails = {tuple(a.shape[1:]) for a in self._arrays}
        if len(tails) != 1:
            raise AugPaintError(f"IndexedView: parts have different item shapes {sorted(tails)}")
        self._tail = tails.pop()
        self.dtype = np.dtype(self._arrays[0].dtype)
        self._starts = np.concatenate([[0], np.cumsum([len(r) for r in self._rows])]).astype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self._starts[-1]), *self._tail)

    @property
    def ndim(self) -> int:
        return 1 + len(self._tail)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, (int, np.integer)):
            return self[np.array([int(key)])][0]
        idx = np.arange(n)[key] if isinstance(key, slice) else np.asarray(key, np.int64).reshape(-1)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"index out of range for {n} rows")
        idx = np.where(idx < 0, idx + n, idx)
        out = np.empty((idx.size, *self._tail), self.dtype)
        part = np.searchsorted(self._starts, idx, side="right") - 1
        for p in np.unique(part):
            sel = np.nonzero(part == p)[0]
            out[sel] = np.asarray(self._arrays[p][self._rows[p][idx[sel] - self._starts[p]]])
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[np.arange(len(self))]
        return out.astype(dtype) if dtype is not None else out


class BatchReader:
    """A ``torch.utils.data.Dataset`` whose items are whole batches: ``reader[index_batch]`` -> tensors.

    Used with ``DataLoader(reader, sampler=<iterable of index batches>, batch_size=None)``: each batch is one
    gather from the memory-mapped shards (rows read in file order), done in a worker process when the loader
    has workers, and handed over as uint8 tensors (pinned when the loader pins), so the float conversion
    happens on the device.

    Args:
        images: (N,H,W,3) uint8 rows (ndarray, ShardedArray or IndexedView).
        labels: (N,H,W) integer rows, or None.
    """

    def __init__(self, images: Any, labels: Any = None) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: Any):
        import torch

        idx = np.asarray(idx, np.int64).reshape(-1)
        x = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        if self.labels is None:
            return x
        return x, torch.from_numpy(np.ascontiguousarray(self.labels[idx]))


def batch_loader(reader: BatchReader, index_batches, *, workers: int = 0, pin_memory: bool = False, seed: int = 0):
    """A DataLoader that yields ``reader[b]`` for each index batch ``b`` of ``index_batches``, in order.

    Args:
        reader: the batch reader.
        index_batches: an iterable of index arrays (drawn in the main process, so the order does not depend on
            the number of workers).
        workers: worker processes (0 = read in the main process).
        pin_memory: page-locked host buffers, so copies to a GPU can overlap compute.
        seed: seeds the loader's own generator (its worker base seed), so building the loader does not draw
            from the global torch RNG that dropout and the models use.
    """
    import torch
    from torch.utils.data import DataLoader

    return DataLoader(reader, sampler=index_batches, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                      persistent_workers=False, prefetch_factor=2 if workers else None,
                      generator=torch.Generator().manual_seed(seed))


def load_dataset(uri: str | Path, **kw: Any) -> SliceDataset:
    """Read a whole dataset artifact into memory (verified); :func:`open_dataset` is the lazy reader."""
    ds = open_dataset(uri, **kw)
    return SliceDataset(np.asarray(ds.images), np.asarray(ds.labels), ds.records, ds.class_names, ds.regions)
