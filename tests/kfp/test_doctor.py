"""``augpaint doctor`` against a fake Kubernetes API (recorded JSON) for a healthy and a broken namespace."""
from __future__ import annotations

import base64

import pytest

from augpaint_core.cli import main
from tests.kfp.fake_k8s import fake_k8s, healthy, kubeconfig
from tests.kfp.fake_kfp import fake_kfp

NS = "team-a"
P = f"/api/v1/namespaces/{NS}"


def _doctor(tmp_path, objects, capsys, *extra: str, forbidden=()) -> tuple[int, list[str], list[str]]:
    _, image = healthy()
    with fake_k8s(objects) as (server, state):
        state.forbidden |= set(forbidden)
        kc = kubeconfig(tmp_path / "kubeconfig", server, namespace=NS)
        capsys.readouterr()
        code = main(["doctor", "--kubeconfig", str(kc), "--image", image, *extra])
        out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out.strip().splitlines(), state.requests


def _b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_healthy_namespace_passes_every_check(tmp_path, capsys):
    objects, _ = healthy()
    code, lines, _ = _doctor(tmp_path, objects, capsys)  # the namespace comes from the kubeconfig context
    print("\n".join(lines))
    assert code == 0
    names = [line.split(":", 1)[0].split(None, 1)[1] for line in lines[:-1]]
    assert names == ["kfp-version", "kfp-launcher", "secret augpaint-minio", "secret augpaint-mlflow",
                     "secret augpaint-minio-root", "secret augpaint-postgres", "gpu", "minio", "mlflow", "image"]
    assert all(line.startswith("ok  ") for line in lines[:-1]), lines
    assert "2.15.0 (>= 2.14)" in lines[0]
    assert "8 allocatable nvidia.com/gpu on 1 node(s)" in lines[6]  # the cordoned and the CPU node do not count
    assert lines[-1] == f"doctor: {NS}: 10 of 10 checks passed"
    text = "\n".join(lines)
    for secret_value in ("pipeline-secret-0000", "root-secret-0000", "pg-secret-0000", "root-admin"):
        assert secret_value not in text


def test_broken_namespace_fails_each_check_with_a_fix(tmp_path, capsys):
    objects, image = healthy()
    # What a fresh KFP 2.5 profile namespace with half-done set-up looks like.
    objects[f"{P}/configmaps/kfp-launcher"]["data"] = {"defaultPipelineRoot": "minio://mlpipeline/v2/artifacts"}
    del objects[f"{P}/secrets/augpaint-postgres"]
    del objects[f"{P}/secrets/augpaint-mlflow"]["data"]["AUGPAINT_MLFLOW_SPOOL"]
    objects[f"{P}/secrets/augpaint-minio"]["data"]["AWS_ACCESS_KEY_ID"] = _b64("root-admin")  # the root keys
    objects[f"{P}/endpoints/augpaint-minio"]["subsets"] = []
    mlflow_pod = objects[f"{P}/pods"]["items"][1]
    mlflow_pod["metadata"]["annotations"] = {}
    mlflow_pod["spec"]["containers"].append({"name": "istio-proxy", "image": "istio/proxyv2:1.26"})
    objects[f"{P}/pods"]["items"].pop()  # the image was never pulled here ...
    objects[f"{P}/events"]["items"] = [{"kind": "Event", "metadata": {"name": "e1", "namespace": NS},
                                         "reason": "Failed", "type": "Warning",
                                         "message": f'Failed to pull image "{image}": not found'}]  # ... it failed
    with fake_kfp() as (host, kfp):
        kfp.tag_name = "2.5.0"  # Kubeflow 1.10.x
        kfp.multi_user = True  # the namespace given to doctor is the one asked
        code, lines, _ = _doctor(tmp_path, objects, capsys, "--namespace", NS, "--host", host, "--set",
                                 "cluster.node_selector={nvidia.com/gpu.product: NVIDIA-A100-SXM4-80GB}",
                                 "--config", "configs/demo.yaml")
    print("\n".join(lines))
    assert code == 1
    by = {line.split(":", 1)[0].split(None, 1)[1]: line for line in lines[:-1]}
    failed = {k for k, v in by.items() if v.startswith("FAIL")}
    assert failed == {"kfp-version", "kfp-launcher", "secret augpaint-mlflow", "secret augpaint-postgres",
                      "minio user", "gpu", "minio", "mlflow", "image"}
    assert all("-> fix: " in by[k] for k in failed)
    assert "is 2.5.0; AugPaint needs 2.14 or newer" in by["kfp-version"]
    assert "minio://mlpipeline" in by["kfp-launcher"]
    assert "AUGPAINT_MLFLOW_SPOOL" in by["secret augpaint-mlflow"]
    assert "Istio sidecar" in by["mlflow"] and 'sidecar.istio.io/inject: "false"' in by["mlflow"]
    assert "no ready pod" in by["minio"]
    assert "NVIDIA-A100-SXM4-80GB" in by["gpu"] and "2 node(s) have that resource" in by["gpu"]
    assert "failed to pull" in by["image"]
    assert lines[-1] == f"doctor: {NS}: 2 of 11 checks passed, 9 failed"
    assert "root-admin" not in "\n".join(lines)


def test_a_profile_user_without_node_access_gets_warnings_not_failures(tmp_path, capsys):
    objects, _ = healthy()
    code, lines, _ = _doctor(tmp_path, objects, capsys, forbidden={
        "/api/v1/nodes", "/apis/apps/v1/namespaces/kubeflow/deployments/ml-pipeline", P,
        f"{P}/configmaps/kfp-launcher"})
    assert code == 0
    warned = [line for line in lines if line.startswith("warn")]
    assert len(warned) == 3 and any("cannot list nodes" in w for w in warned)
    assert any("pass --host" in w for w in warned) and any(w.startswith("warn  kfp-launcher") for w in warned)


def test_unknown_namespace_and_unreachable_api_are_one_line(tmp_path, capsys):
    objects, _ = healthy()
    code, lines, _ = _doctor(tmp_path, objects, capsys, "--namespace", "nope")
    assert code == 1 and lines[0].startswith("FAIL  namespace: nope does not exist")
    kc = kubeconfig(tmp_path / "dead", "http://127.0.0.1:9", namespace=NS)
    assert main(["doctor", "--kubeconfig", str(kc)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Kubernetes API unreachable" in err


@pytest.mark.parametrize("image,status", [("registry.example/augpaint:latest", "FAIL"),
                                          ("registry.example/augpaint", "FAIL"),
                                          ("registry.example/augpaint:0.1.0-abc-dirty", "warn"),
                                          ("registry.example/augpaint:0.1.0-never-seen", "warn")])
def test_image_tags(tmp_path, capsys, image, status):
    objects, _ = healthy()
    with fake_k8s(objects) as (server, _):
        kc = kubeconfig(tmp_path / "kubeconfig", server, namespace=NS)
        main(["doctor", "--kubeconfig", str(kc), "--image", image])
    line = [x for x in capsys.readouterr().out.splitlines() if x.split(None, 1)[1].startswith("image:")][0]
    assert line.startswith(status)
