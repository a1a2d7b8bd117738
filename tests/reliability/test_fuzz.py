"""Seeded fuzzing of every artifact file kind: random truncations and bit flips, a bounded count.

Each mutated file is handed to the stage that reads it. Half of the mutations also re-seal
``artifact.json`` (recompute its file table), so the parsers behind the hash check are reached too.
Every run must end in a one-line error (exit 2) or a correct run (exit 0) - never a traceback - and
must leave the mutated input exactly as it was (nothing deleted or rewritten).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from .conftest import cli, copy_art, reseal, tree_digest

NONE = ["--tracking-uri", "none"]
SEEDS = 2  # per file kind: 9 kinds x 2 = 18 runs (about a minute on 2 cores)

# kind -> (artifact, file inside it, stage arguments with {art} for the mutated copy)
KINDS = {
    "manifest.json": ("dataset", "manifest.json", ["train-seg", "--in", "{art}"]),
    "artifact.json": ("dataset", "artifact.json", ["train-seg", "--in", "{art}"]),
    "shard.npy": ("dataset", "shards/images-00000.npy", ["train-seg", "--in", "{art}"]),
    "safetensors": ("ae", "vqmodel/diffusion_pytorch_model.safetensors",
                    ["train-ldm", "--in", "{dataset}", "--ae", "{art}"]),
    "config.json": ("ldm", "unet/config.json", ["inpaint", "--in", "{dataset}", "--ae", "{ae}", "--ldm", "{art}"]),
    "segmenter.pt": ("baseline", "segmenter.pt", ["evaluate", "--in", "{dataset}", "--baseline", "{art}",
                                                  "--augpaint", "{augpaint}"]),
    "segmenter.json": ("baseline", "segmenter.json", ["evaluate", "--in", "{dataset}", "--baseline", "{art}",
                                                      "--augpaint", "{augpaint}"]),
    "scores.json": ("filtered", "scores.json", ["train-seg", "--in", "{dataset}", "--synthetic", "{art}"]),
    "spool": (None, "records.jsonl", ["sync-tracking"]),
}


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return b"\x00", "grow"
    if rng.random() < 0.5:
        cut = rng.randrange(0, len(data))
        return data[:cut], f"truncate@{cut}"
    i = rng.randrange(0, len(data))
    b = bytearray(data)
    b[i] ^= 1 << rng.randrange(8)
    return bytes(b), f"flip@{i}"


def _spool(root: Path) -> Path:
    b = root / "00000000000000000001-fuzz0001"
    (b / "files").mkdir(parents=True)
    (b / "files" / "00002-notes.txt").write_text("notes")
    recs = [{"run": "offline-1", "op": "create", "experiment": "augpaint", "name": "fuzz", "tags": {}, "parent": ""},
            {"run": "offline-1", "op": "params", "params": {"a": "1"}},
            {"run": "offline-1", "op": "metrics", "metrics": [["loss", 0.5, 1700000000000, 1]]},
            {"run": "offline-1", "op": "artifact", "file": "files/00002-notes.txt", "folder": None},
            {"run": "offline-1", "op": "terminate", "status": "FINISHED"}]
    (b / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return b


@pytest.mark.parametrize("kind", list(KINDS))
def test_fuzz_artifact_files(pipeline_artifacts, tiny_yaml, tmp_path, kind):
    src, rel, args = KINDS[kind]
    seen = []
    for seed in range(SEEDS):
        rng = random.Random(f"{kind}-{seed}")
        work = tmp_path / f"s{seed}"
        if src is None:
            art = _spool(work / "spool")
        else:
            art = copy_art(pipeline_artifacts[src], work / "art")
        f = art / rel
        data, how = mutate(f.read_bytes(), rng)
        f.write_bytes(data)
        sealed = src is not None and rel != "artifact.json" and rng.random() < 0.5
        if sealed:
            reseal(art)
        before = tree_digest(art)
        fmt = {"art": art, **{k: v for k, v in pipeline_artifacts.items() if isinstance(v, Path)}}
        argv = [a.format(**fmt) for a in args]
        if src is None:
            argv += ["--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--spool", work / "spool"]
        else:
            argv[1:1] = ["--config", tiny_yaml, *NONE]
            argv += ["--out", work / "out"]
        res = cli(argv)
        case = f"{kind} seed {seed} {how}{' sealed' if sealed else ''}"
        assert res.outcome in ("error", "ok"), f"{case}: rc={res.rc}\n{res.err[-3000:]}"
        if src is not None:
            assert tree_digest(art) == before, f"{case}: the input was changed"
            assert res.outcome == "error" or (work / "out" / "artifact.json").is_file(), case
        else:  # a replayed (or skipped) bundle gains synced.json; nothing of it is changed or deleted
            marker = art / "synced.json"
            assert marker.is_file(), case
            marker.unlink()
            assert tree_digest(art) == before, f"{case}: the bundle was changed"
        seen.append(res.outcome)
    assert len(seen) == SEEDS
