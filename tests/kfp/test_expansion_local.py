"""The expansion pipeline through kfp.local, twice, against weed mini S3 and a real mlflow server.

New cases arrive between the rounds; the second round must reuse the registered AE/LDM,
inpaint only the new labeled cases and publish version 2 with version 1 as its parent.
"""
from __future__ import annotations

import uuid
from pathlib import Path

from augpaint_core.infra import storage, versions
from augpaint_core.config import parse_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.data.phantom import write_phantom
from tests.conftest import tiny_dict

FIRST, TOTAL = 8, 12
UNLABELED = f"ts_phantom_{TOTAL:03d}"  # arrives in round 2 without a label, in imagesTs (ids of imagesTs get ts_)


def _upload_cases(raw: Path, incoming: str, cases: range, labeled: bool = True) -> None:
    for c in cases:
        name = f"phantom_{c:03d}"
        # An image without a label in imagesTr is a lost label (refused); unlabeled cases go to imagesTs.
        folder = "imagesTr" if labeled else "imagesTs"
        storage.upload_file(raw / "imagesTr" / f"{name}_0000.nii.gz", f"{incoming}/{folder}/{name}_0000.nii.gz")
        if labeled:
            storage.upload_file(raw / "labelsTr" / f"{name}.nii.gz", f"{incoming}/labelsTr/{name}.nii.gz")
    storage.upload_file(raw / "dataset.json", f"{incoming}/dataset.json")


def _synthetic_cases(pipeline_root: str, shards: int = 1) -> set[str]:
    """Case ids of the synthetic slices this round made (the merged shards when it fanned out)."""
    made = [p.parent for p in Path(pipeline_root).rglob("artifact.json") if "/inpaint/" in str(p)]
    assert len(made) == shards, made
    if shards == 1:
        return {r["case_id"] for r in load_dataset(made[0]).records}
    merged = [p.parent for p in Path(pipeline_root).rglob("artifact.json") if "/merge-inpaint-shards/" in str(p)]
    assert len(merged) == 1, merged
    parts = sum(len(load_dataset(d).records) for d in made)
    recs = load_dataset(merged[0]).records
    assert len(recs) == parts  # every shard's slices, once
    return {r["case_id"] for r in recs}


def test_expansion_twice_with_new_cases(s3_bucket, mlflow_server, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from pipelines.local import run_expansion_local

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUGPAINT_MLFLOW_SPOOL", str(tmp_path / "spool"))
    raw = write_phantom(tmp_path / "raw", seed=0, num_cases=TOTAL + 1, slices=4, size=48)
    incoming, vroot = f"s3://{s3_bucket}/incoming", f"s3://{s3_bucket}/datasets/phantom"
    cfg = parse_config(tiny_dict(), "tiny")
    prefix, exp, uri = f"t{uuid.uuid4().hex[:6]}", f"exp-{uuid.uuid4().hex[:6]}", mlflow_server.uri

    _upload_cases(raw, incoming, range(FIRST))
    r1 = run_expansion_local(cfg, incoming, vroot, tmp_path / "run1", uri, model_prefix=prefix, experiment=exp,
                             quiet=True)
    assert r1["published"] and r1["version"] == 1 and r1["parent"] is None
    first_new = set(r1["info"]["new_cases"])
    assert first_new and _synthetic_cases(r1["pipeline_root"]) == first_new

    _upload_cases(raw, incoming, range(FIRST, TOTAL))  # new labeled cases arrive
    _upload_cases(raw, incoming, range(TOTAL, TOTAL + 1), labeled=False)  # and an unlabeled one
    # Round 2 fans inpainting out over 2 shards (ParallelFor + merge) to run that path locally too.
    # imagesTs is generator data only on request (data.official_test_images; the paper presets leave it off).
    cfg2 = parse_config({**tiny_dict(), "inpaint": {**tiny_dict()["inpaint"], "num_shards": 2, "batch_size": 2},
                         "data": {**tiny_dict()["data"], "official_test_images": True}})
    r2 = run_expansion_local(cfg2, incoming, vroot, tmp_path / "run2", uri, model_prefix=prefix, experiment=exp,
                             quiet=True)
    assert r2["published"] and r2["version"] == 2 and r2["parent"] == 1
    new = set(r2["info"]["new_cases"])
    assert new and not new & first_new
    assert new <= {f"phantom_{c:03d}" for c in range(FIRST, TOTAL)}
    assert _synthetic_cases(r2["pipeline_root"], shards=2) == new  # only the new cases were inpainted
    assert set(r2["info"]["expanded_cases"]) == first_new | new
    # The unlabeled arrival joins the dataset as unlabeled training slices and is never inpainted.
    assert r1["counts"]["unlabeled_slices"] == 0 and r2["counts"]["unlabeled_slices"] == 4
    assert UNLABELED not in r2["info"]["expanded_cases"] and UNLABELED not in r2["info"]["splits"]
    # Old patients kept their split; the parent's synthetic slices were carried over.
    for patient, split in r1["info"]["splits"].items():
        assert r2["info"]["splits"][patient] == split
    assert r2["counts"]["synthetic_carried_from_parent"] == r1["counts"]["synthetic_slices"] > 0
    assert r2["counts"]["synthetic_slices"] > r1["counts"]["synthetic_slices"]
    # The manifest's hashes match what a reader downloads.
    local, man = versions.download_version(vroot, tmp_path / "v2")
    syn = load_dataset(local / "synthetic")
    # The filter keeps the best fraction, so some cases may have no synthetic slice left; none is foreign.
    assert {r["case_id"] for r in syn.records} <= first_new | new
    assert len(syn.records) == man["counts"]["synthetic_slices"]
    real = load_dataset(local / "dataset")
    assert {r["case_id"] for r in real.records} == {f"phantom_{c:03d}" for c in range(TOTAL)} | {UNLABELED}
    unl = [i for i, r in enumerate(real.records) if r["case_id"] == UNLABELED]
    assert unl and all(not real.records[i]["labeled"] for i in unl) and not real.labels[unl].any()
    assert man["content_sha256"] == versions.content_hash(man["files"])

    # MLflow, read back from the server: one FINISHED parent per round with nested stage runs.
    c = MlflowClient(uri)
    runs = c.search_runs([c.get_experiment_by_name(exp).experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
    assert all(p.data.tags.get("kfp.pipeline_run_id") for p in parents)
    stages = {"expand-prepare", "expand-ae", "expand-ldm", "expand-select", "filter", "expand-publish",
              "train-seg-augpaint", "expand-promote"}
    kids = [{r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == p.info.run_id}
            for p in sorted(parents, key=lambda p: p.info.start_time)]
    assert stages | {"inpaint"} <= kids[0]
    assert stages | {"inpaint-shard-0", "inpaint-shard-1"} <= kids[1]
    # Round 2 reused the registered AE/LDM: still one version each, and the stage says where it came from.
    for kind in ("ae", "ldm"):
        assert [m.version for m in c.search_model_versions(f"name='{prefix}-{kind}'")] == ["1"]
        assert c.get_model_version_by_alias(f"{prefix}-{kind}", "current").version == "1"
    reused = [r for r in runs if r.info.run_name == "expand-ae" and "augpaint.model_source" in r.data.tags]
    assert sorted(r.data.tags["augpaint.model_source"] for r in reused) == [f"models:/{prefix}-ae/1",
                                                                             f"models:/{prefix}-ae@current"]
    # The segmenter: two registered versions; champion moved only if round 2 was better.
    seg = sorted(int(m.version) for m in c.search_model_versions(f"name='{prefix}-seg'"))
    assert seg == [1, 2]
    promote2 = [r for r in runs if r.info.run_name == "expand-promote" and "champion_mean_dice" in r.data.metrics]
    assert len(promote2) == 1
    m = promote2[0].data.metrics
    better = m["candidate_mean_dice"] > m["champion_mean_dice"]
    assert m["promoted"] == float(better)
    assert c.get_model_version_by_alias(f"{prefix}-seg", "champion").version == ("2" if better else "1")
