"""The optional nnU-Net export step: compiled under a condition that is off by default, and run through kfp.local."""
import json

import yaml

from tests.conftest import tiny_dict


def test_export_step_is_optional_and_off_by_default(tmp_path):
    from pipelines.compile import compile_pipeline

    spec = next(yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml").read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["export_nnunet_as"]["defaultValue"] == "" and params["export_nnunet_as"]["description"]
    dags = {name: c["dag"]["tasks"] for name, c in spec["components"].items() if "dag" in c}
    holder = [name for name, tasks in dags.items() if "export-nnunet" in tasks]
    assert len(holder) == 1
    # the export task sits in a condition sub-DAG; the task that runs that sub-DAG carries the condition
    cond = [t for tasks in dags.values() for t in tasks.values() if t["componentRef"]["name"] == holder[0]]
    assert len(cond) == 1 and "export_nnunet_as" in cond[0]["triggerPolicy"]["condition"]
    assert "filter-synthetic" in cond[0].get("dependentTasks", [])


def test_export_component_through_kfp_local(pipeline_artifacts, tmp_path, monkeypatch):
    from kfp import dsl, local
    from kfp.dsl import Dataset

    from augpaint_core.config import parse_config
    from components.export import export_nnunet

    monkeypatch.chdir(tmp_path)
    cfg_yaml = parse_config(tiny_dict(), "tiny").to_yaml()
    a = pipeline_artifacts

    @dsl.pipeline(name="export-only")
    def export_only(config_yaml: str, name: str):
        ds = dsl.importer(artifact_uri=str(a["dataset"]), artifact_class=Dataset)
        flt = dsl.importer(artifact_uri=str(a["filtered"]), artifact_class=Dataset)
        with dsl.If(name != ""):  # the same switch as the pipeline's export_nnunet_as
            export_nnunet(config_yaml=config_yaml, dataset=ds.output, filtered=flt.output, nnunet_name=name,
                          tracking_uri="none")

    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    export_only(config_yaml=cfg_yaml, name="")
    assert not list(root.rglob("dataset.json"))  # off: nothing exported
    export_only(config_yaml=cfg_yaml, name="Dataset505_Local")
    found = list(root.rglob("Dataset505_Local/dataset.json"))
    assert len(found) == 1
    meta = json.loads(found[0].read_text())
    art = json.loads((found[0].parent / "artifact.json").read_text())
    assert meta["numTraining"] == art["counts"]["training"] > art["counts"]["training_synthetic"] > 0
