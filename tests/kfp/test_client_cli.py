"""``augpaint compile / submit / schedule / runs`` against a recording fake of the KFP API."""
from __future__ import annotations

import socket

import pytest
import yaml

from augpaint_core.cli import main
from tests.conftest import REPO
from tests.kfp.fake_kfp import fake_kfp


def _posts(state, path):
    return [b for m, p, b in state.requests if m == "POST" and p == path]


def test_compile_cli_writes_both_pipelines(tmp_path, capsys):
    for name in ("augpaint", "expansion"):
        out = tmp_path / f"{name}.yaml"
        assert main(["compile", "--pipeline", name, "--config", str(REPO / "configs/demo.yaml"),
                     "--image", "registry.example/augpaint:9.9.9", "--out", str(out)]) == 0
        spec = next(yaml.safe_load_all(out.read_text()))
        assert spec["pipelineInfo"]["name"] == name.replace("expansion", "augpaint-expansion")
    assert "compile: wrote" in capsys.readouterr().out


def test_submit_schedule_and_list_runs(tmp_path, capsys):
    pkg = tmp_path / "p.yaml"
    assert main(["compile", "--out", str(pkg)]) == 0
    with fake_kfp() as (host, state):
        assert main(["submit", "--host", host, "--package", str(pkg), "--config", str(REPO / "configs/demo.yaml"),
                     "--param", "data_version=2026-11-26", "--run-name", "nightly", "--experiment", "exp-a"]) == 0
        run = _posts(state, "/apis/v2beta1/runs")[0]
        assert run["display_name"] == "nightly"
        assert run["runtime_config"]["parameters"]["data_version"] == "2026-11-26"
        assert "name: demo" in run["runtime_config"]["parameters"]["config_yaml"]
        assert run["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "augpaint"
        assert run["experiment_id"] == "exp-1"
        # The platform spec (GPU tolerations, secrets) travels with the run.
        assert "kubernetes" in run["pipeline_spec"]["platform_spec"]["platforms"]

        assert main(["schedule", "--host", host, "--cron", "0 0 3 * * 1", "--name", "weekly-expansion",
                     "--config", str(REPO / "configs/demo.yaml"), "--experiment", "exp-a",
                     "--param", "incoming_uri=s3://augpaint/incoming"]) == 0
        rr = _posts(state, "/apis/v2beta1/recurringruns")[0]
        assert rr["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"
        assert int(rr["max_concurrency"]) == 1 and rr["no_catchup"] is True
        assert rr["display_name"] == "weekly-expansion" and rr["mode"] == "ENABLE"
        assert rr["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "augpaint-expansion"
        assert rr["runtime_config"]["parameters"]["incoming_uri"] == "s3://augpaint/incoming"
        assert len(_posts(state, "/apis/v2beta1/experiments")) == 1  # the experiment was reused

        capsys.readouterr()
        assert main(["runs", "--host", host]) == 0
        out = capsys.readouterr().out
        assert "run-1" in out and "nightly" in out and "PENDING" in out


def test_client_errors_are_one_line(tmp_path, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A 5-field (Unix) cron is refused before any call.
    assert main(["schedule", "--host", f"http://127.0.0.1:{port}", "--cron", "0 3 * * 1", "--name", "x"]) == 2
    assert "6 fields, seconds first" in capsys.readouterr().err
    pkg = tmp_path / "p.yaml"
    main(["compile", "--out", str(pkg)])
    with fake_kfp() as (host, state):
        state.fail_status = 403
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "HTTP 403" in err and "Traceback" not in err


@pytest.mark.parametrize("bad", ["x", "a=1=2"])
def test_parse_params(bad):
    from augpaint_core.errors import AugPaintError
    from pipelines.client import parse_params

    if bad == "x":
        with pytest.raises(AugPaintError, match="expected name=value"):
            parse_params([bad])
    else:
        assert parse_params([bad, "n=3", "flag=true"]) == {"a": "1=2", "n": 3, "flag": True}


def _kubeconfig(path, namespace: str | None) -> str:
    ctx = {"cluster": "c", "user": "u", **({"namespace": namespace} if namespace else {})}
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kf",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": "t"}}], "contexts": [{"name": "kf", "context": ctx}]}))
    return str(path)


@pytest.mark.parametrize("tag", ["2.5.0", "2.4.1", "2.13.9"])
def test_submit_refuses_a_kfp_backend_older_than_2_14(tmp_path, capsys, tag):
    pkg = tmp_path / "p.yaml"
    main(["compile", "--out", str(pkg)])
    with fake_kfp() as (host, state):
        state.tag_name = tag
        capsys.readouterr()
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"is version {tag}" in err and "2.14 or newer" in err
        assert "Kubeflow 1.11" in err
        assert not _posts(state, "/apis/v2beta1/runs")  # nothing was created
        assert main(["schedule", "--host", host, "--package", str(pkg), "--cron", "0 0 3 * * 1", "--name", "w"]) == 2
        assert not _posts(state, "/apis/v2beta1/recurringruns")


@pytest.mark.parametrize("tag", ["2.14.0", "2.17.1", "v2.16.0"])
def test_submit_accepts_kfp_2_14_and_newer(tmp_path, tag):
    pkg = tmp_path / "p.yaml"
    main(["compile", "--out", str(pkg)])
    with fake_kfp() as (host, state):
        state.tag_name = tag
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 0
        assert len(_posts(state, "/apis/v2beta1/runs")) == 1


def test_unknown_backend_version_warns_and_goes_on(tmp_path, capsys):
    pkg = tmp_path / "p.yaml"
    main(["compile", "--out", str(pkg)])
    with fake_kfp() as (host, state):
        state.tag_name = "unknown"  # dev builds of the API server
        capsys.readouterr()
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 0
        assert "reports version 'unknown'" in capsys.readouterr().err


def test_namespace_defaults_to_the_kubeconfig_context(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no kfp context file, no ~/.kube/config
    pkg = tmp_path / "p.yaml"
    main(["compile", "--out", str(pkg)])
    with fake_kfp() as (host, state):
        state.multi_user = True
        # Multi-user and no namespace anywhere: one line that says how to set it.
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path / "none.yaml", None))
        capsys.readouterr()
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "--namespace" in err and "set-context" in err
        assert not _posts(state, "/apis/v2beta1/runs")
        # The context's namespace is used...
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path / "kc.yaml", "team-a"))
        assert main(["submit", "--host", host, "--package", str(pkg)]) == 0
        assert _posts(state, "/apis/v2beta1/experiments")[-1]["namespace"] == "team-a"
        # ... unless --namespace says otherwise.
        assert main(["submit", "--host", host, "--package", str(pkg), "--namespace", "team-b",
                     "--experiment", "other"]) == 0
        assert _posts(state, "/apis/v2beta1/experiments")[-1]["namespace"] == "team-b"
        assert main(["runs", "--host", host]) == 0
        runs_q = [q for m, p, q in state.requests if m == "GET" and p == "/apis/v2beta1/runs"][-1]
        assert runs_q["namespace"] == "team-a"
