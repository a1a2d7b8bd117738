"""docker/: pinned bases, non-root, no credentials, the compile-time kfp, immutable tags (no engine needed)."""
from __future__ import annotations

import re
import subprocess

import kfp

from tests.conftest import REPO

DOCKERFILES = [REPO / "docker" / "Dockerfile", REPO / "docker" / "mlflow.Dockerfile"]


def _base_images(text: str) -> list[str]:
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    out = []
    for ref in re.findall(r"^FROM (\S+)", text, re.M):
        m = re.fullmatch(r"\$\{(\w+)\}", ref)
        out.append(args[m.group(1)] if m else ref)
    return out


def test_bases_are_pinned_and_users_non_root():
    for f in DOCKERFILES:
        text = f.read_text()
        for image in _base_images(text):
            pinned = "@sha256:" in image or re.search(r":\d[\w.-]*$", image)
            assert pinned and not image.endswith(":latest"), f"{f.name}: {image} is not pinned"
        users = re.findall(r"^USER (\S+)", text, re.M)
        assert users and users[-1] not in ("root", "0"), f.name
        # No credentials baked in: no ENV/ARG that looks like one.
        for line in re.findall(r"^(?:ENV|ARG) .*$", text, re.M):
            assert not re.search(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY", line, re.I), line


def test_gpu_image_is_cuda_pytorch_with_the_compile_time_kfp():
    text = DOCKERFILES[0].read_text()
    base = _base_images(text)[0]
    assert base.startswith("pytorch/pytorch:") and "cuda" in base
    torch_pin = re.search(r"^torch==(\S+)", (REPO / "requirements.txt").read_text(), re.M).group(1)
    assert base.split(":")[1].startswith(torch_pin + "-")  # the base's torch is the pinned one
    assert f"ARG KFP_VERSION={kfp.__version__}" in text
    constraints = (REPO / "docker" / "constraints.txt").read_text()
    assert f"kfp=={kfp.__version__}\n" in constraints and f"kfp-kubernetes==" in constraints


def test_build_script_prints_immutable_tags():
    out = subprocess.run([str(REPO / "docker" / "build.sh"), "--print", "registry.example/team"],
                         capture_output=True, text=True, check=True, cwd=REPO).stdout.split()
    sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                         cwd=REPO).stdout.strip()
    import tomllib

    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert re.fullmatch(rf"registry\.example/team/augpaint:{re.escape(version)}-{sha}(-dirty)?", out[0])
    assert out[1] == "registry.example/team/mlflow-server:3.17.2"


def test_dockerignore_keeps_secrets_and_environments_out():
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # deny by default
    allowed = [line[1:] for line in lines if line.startswith("!")]
    for path in allowed:
        assert not path.startswith((".venv", "runs", "manifests", ".git", "mlflow")), path
    copied = set(re.findall(r"^COPY (.+) \S+$", DOCKERFILES[0].read_text(), re.M))
    for group in copied:
        for src in group.split():
            assert any(src.rstrip("/") == a.rstrip("/") for a in allowed), f"COPY {src} is ignored"
