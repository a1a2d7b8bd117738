"""The manifest's MLflow --allowed-hosts on a real ``mlflow server``, and what the client does with a 403.

In a profile namespace a 403 comes from the MLflow pod's Istio sidecar ("RBAC: access denied");
here the same answer comes from MLflow's own Host check, which is real on this machine.
"""
from __future__ import annotations

import http.client

import pytest

from augpaint_core.infra import tracking
from augpaint_core.infra.tracking import TrackingAccessDenied, close_parent_runs, stage_run, start_parent_run
from tests.manifests.test_manifests import allowed_hosts, containers, render
from tests.services import MlflowServer

NS = "kubeflow-user-example-com"


@pytest.fixture(scope="module")
def manifest_mlflow(s3_server, tmp_path_factory):
    """``mlflow server`` with the kubeflow overlay's MLFLOW_SERVER_ALLOWED_HOSTS, as the kubelet expands it."""
    import minio

    mlflow = next(o for o in render("kubeflow") if o["kind"] == "Deployment"
                  and o["metadata"]["name"] == "augpaint-mlflow")
    hosts = allowed_hosts(containers(mlflow)[0], NS)
    cli = minio.Minio(s3_server["endpoint"].split("://", 1)[1], s3_server["access_key"], s3_server["secret_key"],
                      secure=False, region="us-east-1")
    cli.make_bucket("mlflow-access")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", ",".join(hosts))
        server = MlflowServer(tmp_path_factory.mktemp("mlflow-access"), s3_server, "mlflow-access")
        server.start()
    try:
        yield server
    finally:
        server.stop()


def _status(server: MlflowServer, host: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": host})
    return conn.getresponse().status


@pytest.mark.parametrize("host,ok", [
    ("augpaint-mlflow:5000", True),  # what the pipeline pods use (augpaint-mlflow secret)
    ("augpaint-mlflow", True),
    (f"augpaint-mlflow.{NS}:5000", True),
    (f"augpaint-mlflow.{NS}.svc:5000", True),
    (f"augpaint-mlflow.{NS}.svc.cluster.local:5000", True),  # the FQDN with its port (refused before)
    ("localhost:8080", True),  # kubectl port-forward to another local port (refused before)
    ("127.0.0.1:15000", True),
    ("evil.example.com", False),  # foreign names (DNS rebinding) stay out
    ("augpaint-mlflow.evil.example.com", False),
    (f"augpaint-mlflow.{NS}.evil.example.com:5000", False),
    ("augpaint-mlflow.other-namespace:5000", False),
    ("127.1:5000", False),
])
def test_allowed_hosts_wildcards_admit_the_service_and_refuse_foreign_hosts(manifest_mlflow, host, ok):
    assert _status(manifest_mlflow, host) == (200 if ok else 403)


def test_http_403_is_an_access_error_and_nothing_is_spooled(manifest_mlflow, monkeypatch, tmp_path, capsys):
    spool = tmp_path / "spool"
    monkeypatch.setenv(tracking.SPOOL_ENV, str(spool))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # the local fallback spool too
    good = manifest_mlflow.uri
    refused = f"http://127.1:{manifest_mlflow.port}"  # same server; its Host header is not allowed
    assert start_parent_run(good, "access", "ok", tags={"kfp.pipeline_run_id": "k1"})  # control: reachable
    with pytest.raises(TrackingAccessDenied, match=r"access denied \(HTTP 403") as err:
        start_parent_run(refused, "access", "p", tags={"kfp.pipeline_run_id": "k2"}, offline_ok=True)
    assert "\n" not in str(err.value) and "sidecar.istio.io/inject" in str(err.value)
    with pytest.raises(TrackingAccessDenied):
        with stage_run(refused, "", "train-ae"):
            pass
    with pytest.raises(TrackingAccessDenied):
        close_parent_runs(refused, "access", "k1", "FINISHED", offline_ok=True)
    assert not spool.exists() and not (tmp_path / "home").exists()  # an access error is never spooled
    # The component: one line, exit 2 (the pipeline stops at its first task instead of spooling a whole run).
    from components.tracking import start_tracking

    capsys.readouterr()
    with pytest.raises(SystemExit) as ex:
        start_tracking.python_func(tracking_uri=refused, experiment="access", kfp_run_id="k3", kfp_run_name="r",
                                   config_yaml="seed: 1\n")
    assert ex.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "access denied (HTTP 403" in lines[0] and "Traceback" not in lines[0]
