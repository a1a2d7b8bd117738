"""Components of the recurring dataset-expansion pipeline (the logic is in augpaint_core.expansion)."""
from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from components import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def scan_incoming(incoming_uri: str, versions_uri: str) -> NamedTuple("Scan", [("fingerprint", str),
                                                                              ("parent_version", int)]):
    """Fingerprint the incoming prefix (the data version) and find the latest published version (0: none)."""
    import sys
    from collections import namedtuple

    from augpaint_core.infra import versions
    from augpaint_core.errors import AugPaintError
    from augpaint_core.expansion import fingerprint

    try:
        fp = fingerprint(incoming_uri)
        parent = versions.latest_version(versions_uri) or 0
    except AugPaintError as err:
        print(f"augpaint expand-scan: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    return namedtuple("Scan", ["fingerprint", "parent_version"])(fp, parent)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def prepare_dataset(config_yaml: str, incoming_uri: str, versions_uri: str, parent_version: int, data_version: str,
                    dataset: Output[Dataset], tracking_uri: str = "", parent_run_id: str = ""):
    """Preprocess everything in the incoming prefix; patients of the parent version keep their split.

    ``data_version`` (the incoming fingerprint) keys KFP's cache.
    """
    from augpaint_core import expansion

    expansion.run_tracked("expand-prepare", config_yaml, expansion.prepare, tracking_uri=tracking_uri,
                          parent_run_id=parent_run_id, out=dataset.path, incoming=incoming_uri,
                          versions_uri=versions_uri, parent=int(parent_version))


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def expansion_ae(config_yaml: str, dataset: Input[Dataset], ae: Output[Model], model_prefix: str, retrain: bool,
                 tracking_uri: str = "", parent_run_id: str = "") -> bool:
    """The registered AE (<prefix>-ae@current), or train and register one; returns True if trained now."""
    from augpaint_core import expansion

    _, trained = expansion.run_tracked("expand-ae", config_yaml, expansion.models, tracking_uri=tracking_uri,
                                       parent_run_id=parent_run_id, out=ae.path, kind="ae", dataset=dataset.path,
                                       prefix=model_prefix, retrain=bool(retrain))
    return trained


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def expansion_ldm(config_yaml: str, dataset: Input[Dataset], ae: Input[Model], ldm: Output[Model], model_prefix: str,
                  retrain: bool, ae_trained: bool, tracking_uri: str = "", parent_run_id: str = "") -> bool:
    """The registered LDM (<prefix>-ldm@current), or train and register one (always after a new AE)."""
    from augpaint_core import expansion

    _, trained = expansion.run_tracked("expand-ldm", config_yaml, expansion.models, tracking_uri=tracking_uri,
                                       parent_run_id=parent_run_id, out=ldm.path, kind="ldm", dataset=dataset.path,
                                       prefix=model_prefix, retrain=bool(retrain) or bool(ae_trained),
                                       ae_path=ae.path)
    return trained


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def select_new_cases(config_yaml: str, dataset: Input[Dataset], versions_uri: str, parent_version: int,
                     selected: Output[Dataset], tracking_uri: str = "", parent_run_id: str = "") -> int:
    """The dataset without the labeled cases the parent version already expanded; returns the new cases' count."""
    from augpaint_core import expansion
    from augpaint_core.infra.artifacts import read_artifact_meta

    expansion.run_tracked("expand-select", config_yaml, expansion.select_new, tracking_uri=tracking_uri,
                          parent_run_id=parent_run_id, out=selected.path, dataset=dataset.path,
                          versions_uri=versions_uri, parent=int(parent_version))
    return len(read_artifact_meta(selected.path)["new_cases"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def publish_dataset_version(config_yaml: str, dataset: Input[Dataset], selected: Input[Dataset],
                            filtered: Input[Dataset], versions_uri: str, parent_version: int, incoming_uri: str,
                            real: Output[Dataset], synthetic: Output[Dataset], tracking_uri: str = "",
                            parent_run_id: str = "") -> int:
    """Publish the new dataset version (atomically) and return its number; outputs its real and synthetic parts."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from augpaint_core import expansion

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "version"
        expansion.run_tracked("expand-publish", config_yaml, expansion.publish, tracking_uri=tracking_uri,
                              parent_run_id=parent_run_id, out=out, dataset=dataset.path, selected=selected.path,
                              filtered=filtered.path, versions_uri=versions_uri, parent=int(parent_version),
                              incoming=incoming_uri)
        shutil.copytree(out / "dataset", real.path, dirs_exist_ok=True)
        shutil.copytree(out / "synthetic", synthetic.path, dirs_exist_ok=True)
        return int(json.loads((out / "version.json").read_text())["version"])


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_segmenter(config_yaml: str, dataset: Input[Dataset], candidate: Input[Model], model_prefix: str,
                      report: Output[Artifact], metrics: Output[Metrics], tracking_uri: str = "",
                      parent_run_id: str = "") -> bool:
    """Register the new segmenter; move <prefix>-seg@champion to it only if it beats the champion on the test split."""
    import json
    from pathlib import Path

    from augpaint_core import expansion

    expansion.run_tracked("expand-promote", config_yaml, expansion.promote, tracking_uri=tracking_uri,
                          parent_run_id=parent_run_id, out=report.path, dataset=dataset.path,
                          candidate=candidate.path, prefix=model_prefix)
    result = json.loads((Path(report.path) / "metrics.json").read_text())
    metrics.log_metric("candidate_mean_dice", result["candidate"]["dice"])
    if result["champion"]:
        metrics.log_metric("champion_mean_dice", result["champion"]["dice"])
    metrics.log_metric("promoted", float(result["promoted"]))
    return bool(result["promoted"])
