"""The tiny pipeline with kfp.local.DockerRunner in the built image, and checks of what it wrote.

Run by docker/image_test.sh (``make image-test``) with DOCKER_HOST at podman's Docker-API socket and
AUGPAINT_IMAGE naming the image; not a pytest module, so ``make test`` never collects it. It prints
``image-test: N passed, N failed`` and exits non-zero if any check failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import uuid
from pathlib import Path
from typing import Callable

STAGES = ("preprocess", "train-ae", "train-ldm", "inpaint", "filter-synthetic", "train-seg-baseline",
          "train-seg-augpaint", "evaluate")
IMAGE_UID = 1000  # docker/Dockerfile: USER 1000


def run_docker_container_without_auto_remove(client, image: str, command: list[str], volumes: dict,
                                             **container_run_args) -> int:
    """kfp.local's run_docker_container, minus ``auto_remove=True``.

    While podman 4.3 removes an auto-remove container its Docker API answers 500 instead of 404, and
    kfp's log streaming then fails about 4 runs in 5. Here the container stays until its real exit
    code is read, then is removed. Test harness only: the cluster and ``augpaint run`` never use it.

    Args:
        client: docker SDK client.
        image: image reference (must exist locally: nothing is pulled here).
        command: the component's command.
        volumes: kfp's bind mounts (the pipeline root).
        container_run_args: DockerRunner's extra arguments (environment).
    """
    if ":" not in image:
        image += ":latest"
    # Tasks find the MLflow parent run by the run key; on a cluster it comes from the pod's labels, here
    # from this process (kfp.local passes a container no environment of its own beyond the task's).
    from augpaint_core.stages import RUN_KEY_ENV

    env = dict(container_run_args.pop("environment", None) or {})
    if os.environ.get(RUN_KEY_ENV):
        env[RUN_KEY_ENV] = os.environ[RUN_KEY_ENV]
    container_run_args["environment"] = env
    container = client.containers.run(image=image, command=command, detach=True, stdout=True, stderr=True,
                                      volumes=volumes, **container_run_args)
    try:
        for line in container.logs(stream=True, follow=True):
            print(line.decode(errors="replace"), end="")
        return int(container.wait()["StatusCode"])
    finally:
        container.remove(force=True)


def patch_kfp_docker_runner() -> None:
    """Swap in the runner above for this process only."""
    from kfp.local import docker_task_handler

    docker_task_handler.run_docker_container = run_docker_container_without_auto_remove


def run_pipeline(cfg, root: Path, tracking_uri: str) -> None:
    """Run the augpaint pipeline for ``cfg`` with every task in a container; raises RuntimeError on failure.

    Args:
        cfg: validated config.
        root: pipeline root (bind-mounted at the same path into each container).
        tracking_uri: MLflow URI as the containers see it.
    """
    from kfp import local

    from augpaint_core.stages import RUN_KEY_ENV
    from pipelines.augpaint_pipeline import build_pipeline

    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o777)  # the image runs as uid 1000; kfp creates the task folders from this (root) process
    local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
    os.environ[RUN_KEY_ENV] = f"image-test-{uuid.uuid4().hex}"  # one key per pipeline run, as on a cluster
    try:
        build_pipeline(cfg)(config_yaml=cfg.to_yaml(), tracking_uri=tracking_uri,
                            experiment=cfg.tracking.experiment)
    finally:
        os.environ.pop(RUN_KEY_ENV, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="scratch folder for pipeline roots")
    parser.add_argument("--skip-failure-run", action="store_true", help="only the successful pipeline")
    args = parser.parse_args()
    image = os.environ.get("AUGPAINT_IMAGE", "")
    if not image or not os.environ.get("DOCKER_HOST"):
        print("run_in_image.py: set AUGPAINT_IMAGE and DOCKER_HOST (run it through make image-test)", file=sys.stderr)
        return 2
    os.umask(0o000)  # folders kfp makes here must be writable by the container's non-root user
    patch_kfp_docker_runner()

    from mlflow.tracking import MlflowClient

    from augpaint_core.config import parse_config
    from tests.conftest import tiny_dict

    out = args.out.resolve()
    results: list[tuple[str, bool]] = []

    def check(name: str, fn: Callable[[], None]) -> None:
        try:
            fn()
            results.append((name, True))
            print(f"PASSED {name}")
        except Exception:  # noqa: BLE001  (report every check, then fail)
            traceback.print_exc()
            results.append((name, False))
            print(f"FAILED {name}")

    root = out / "ok" / "pipeline_root"
    uri = f"sqlite:///{root}/mlflow.db"  # the containers share the bind-mounted root, one task at a time
    cfg = parse_config(tiny_dict(), "tiny")
    t0 = time.time()
    try:
        run_pipeline(cfg, root, uri)
        ran: Exception | None = None
    except Exception as err:  # noqa: BLE001
        ran = err
    elapsed = time.time() - t0
    print(f"pipeline in containers: {elapsed:.0f} s")

    def pipeline_succeeded() -> None:
        assert ran is None, f"pipeline failed: {ran}"

    def every_stage_wrote_its_artifact_as_the_image_user() -> None:
        for stage in STAGES:
            found = list(root.glob(f"*/{stage}/*/artifact.json"))
            assert found, f"{stage}: no artifact.json"
            meta = json.loads(found[0].read_text())
            assert meta, f"{stage}: empty artifact.json"
            owner = found[0].stat().st_uid
            assert owner == IMAGE_UID, f"{stage}: artifact.json owned by uid {owner}, not the image user {IMAGE_UID}"

    def evaluate_report_has_dice() -> None:
        reports = [p.parent for p in root.glob("*/evaluate/*/metrics.json") if (p.parent / "report.md").is_file()]
        assert len(reports) == 1, reports
        metrics = json.loads((reports[0] / "metrics.json").read_text())
        for name in ("baseline", "augpaint"):
            dice = metrics[name]["mean"]["dice"]
            assert 0.0 <= dice <= 1.0, (name, dice)
        assert metrics["baseline"]["per_case"].keys() == metrics["augpaint"]["per_case"].keys()
        assert "mean Dice" in (reports[0] / "report.md").read_text()
        print(f"  mean Dice: baseline {metrics['baseline']['mean']['dice']:.3f}, "
              f"augpaint {metrics['augpaint']['mean']['dice']:.3f}")

    def mlflow_parent_run_finished() -> None:
        c = MlflowClient(uri)
        runs = c.search_runs([c.get_experiment_by_name(cfg.tracking.experiment).experiment_id])
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(parents) == 1 and parents[0].info.status == "FINISHED", [p.info.status for p in parents]
        children = {r.info.run_name for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id}
        assert {"preprocess", "train-ae", "evaluate"} <= children, children

    check("pipeline_succeeded", pipeline_succeeded)
    check("every_stage_wrote_its_artifact_as_the_image_user", every_stage_wrote_its_artifact_as_the_image_user)
    check("evaluate_report_has_dice", evaluate_report_has_dice)
    check("mlflow_parent_run_finished", mlflow_parent_run_finished)

    if not args.skip_failure_run:
        # A failing component must fail the run (the patched runner reads the real exit code).
        bad_root = out / "bad" / "pipeline_root"
        bad = tiny_dict()
        bad["data"]["path"] = str(out / "missing")
        failed: list[Exception] = []
        try:
            run_pipeline(parse_config(bad, "tiny"), bad_root, f"sqlite:///{bad_root}/mlflow.db")
        except RuntimeError as err:
            failed.append(err)

        def failing_stage_fails_the_run() -> None:
            assert failed, "the pipeline with a missing data path did not fail"
            assert not list(bad_root.glob("*/preprocess/*/artifact.json")), "a failed stage left an artifact.json"

        check("failing_stage_fails_the_run", failing_stage_fails_the_run)

    passed = sum(ok for _, ok in results)
    print(f"image-test: {passed} passed, {len(results) - passed} failed")
    return 0 if passed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
