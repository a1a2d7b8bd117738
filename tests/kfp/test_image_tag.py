"""The components' default image is a tag docker/build.sh produces (issue 16: ``:0.1.0`` did not exist)."""
from __future__ import annotations

import os
import subprocess
import sys
import tomllib

from tests.conftest import REPO

VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _default_image() -> str:
    env = {k: v for k, v in os.environ.items() if k != "AUGPAINT_IMAGE"}
    return subprocess.run([sys.executable, "-c", "from components import IMAGE; print(IMAGE)"], env=env, cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()


def _printed(repo, *args: str) -> list[str]:
    return subprocess.run([str(repo / "docker" / "build.sh"), "--print", *args], capture_output=True, text=True,
                          check=True, cwd=repo).stdout.split()


def test_a_clean_build_tags_the_components_default_image(tmp_path):
    # A clone of HEAD is a clean tree whatever the state of this checkout.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
    out = _printed(clone)
    assert _default_image() in out
    assert out[2] == f"ghcr.io/augpaint/augpaint:{VERSION}" and out[0].startswith(out[2] + "-")
    assert _printed(clone, "registry.example/t")[2] == f"registry.example/t/augpaint:{VERSION}"


def test_a_dirty_build_leaves_the_release_tag_alone(tmp_path):
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--shared", str(REPO), str(clone)], check=True)
    (clone / "pyproject.toml").write_text((clone / "pyproject.toml").read_text() + "\n# edited\n")
    out = _printed(clone)
    assert out[0].endswith("-dirty") and len(out) == 2 and _default_image() not in out
