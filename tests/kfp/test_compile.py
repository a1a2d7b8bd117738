"""The compiled pipeline: seven stage components, the project image, documented parameters."""
import re

import yaml

from tests.conftest import REPO

STAGES = ["preprocess", "train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-baseline",
          "train-seg-augpaint", "evaluate"]


def test_compiled_yaml_has_the_seven_stages(tmp_path):
    from pipelines.compile import compile_pipeline

    out = compile_pipeline(tmp_path / "p.yaml", image="registry.example/augpaint:1.2.3")
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = docs[0]
    comps = set(spec["components"])
    for s in STAGES:
        assert f"comp-{s}" in comps
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/augpaint:1.2.3"}
    tasks = spec["root"]["dag"]["tasks"]["exit-handler-1"]["componentRef"]["name"]
    inner = spec["components"][tasks]["dag"]["tasks"]
    # The baseline only depends on preprocess (+ the tracking start and its config section), so it runs beside
    # the generative branch.
    deps = set(inner["train-seg-baseline"].get("dependentTasks", []))
    assert deps <= {"preprocess", "start-tracking", "stage-configs"}
    assert "filter-synthetic" in inner["train-seg-augpaint"]["dependentTasks"]
    assert spec["root"]["dag"]["tasks"]["close-tracking"]["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["config_yaml"]["description"]  # docstring Args reach the UI
    # No kfp package install at run time: the image carries kfp.
    for e in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(e["container"].get("command", []))


def test_core_never_imports_kfp():
    for p in (REPO / "augpaint_core").rglob("*.py"):
        assert not re.search(r"^\s*(import|from)\s+kfp\b", p.read_text(), re.M), p
