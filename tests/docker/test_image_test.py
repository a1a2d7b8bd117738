"""make image-test's wiring (the image build and the run in containers themselves need root and podman:
docker/image_test.sh, run by .ci/run after make test)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "docker" / "image_test.sh"


def test_image_test_script_parses_and_is_wired_after_make_test():
    assert os.access(SCRIPT, os.X_OK)
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    make = (REPO / "Makefile").read_text()
    assert re.search(r"^image-test:.*\n\tdocker/image_test\.sh$", make, re.M)
    commands = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    test = commands.index("make test")
    assert any(c.endswith("make image-test") for c in commands[test + 1:]), commands
    script = SCRIPT.read_text()
    # The stand-in base replaces the CUDA base only through the Dockerfile's own ARG; no second Dockerfile.
    assert "-f docker/Dockerfile" in script and '--build-arg BASE_IMAGE="$BASE"' in script


def test_make_test_does_not_collect_the_image_checker():
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          str(REPO / "tests" / "image")], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 5, out.stdout + out.stderr  # 5: no tests collected
    assert (REPO / "tests" / "image" / "run_in_image.py").is_file()
