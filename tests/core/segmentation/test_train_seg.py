import numpy as np

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.config import SegConfig
from augpaint_core.segmentation.metrics import dice
from augpaint_core.segmentation.train_seg import fit_segmenter, predict


def test_segmenter_overfits_a_tiny_batch():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, 32, 32, 3)).astype(np.uint8)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:20, 10:22] = 1
    images[labels == 1] += 120  # a bright square to find
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4), max_steps=80, batch_size=2, lr=5e-3, val_checks=1)
    model, hist = fit_segmenter(images, labels, 2, cfg, seed=0)
    assert dice(predict(model, images) == 1, labels == 1) > 0.8


def test_augpaint_model_saw_the_synthetic_pairs(pipeline_artifacts):
    base = read_artifact_meta(pipeline_artifacts["baseline"])
    aug = read_artifact_meta(pipeline_artifacts["augpaint"])
    flt = read_artifact_meta(pipeline_artifacts["filtered"])
    assert base["num_synthetic"] == 0 and aug["num_synthetic"] == flt["num_kept"] > 0
    assert base["num_real"] == aug["num_real"]
    assert "synthetic" in aug["inputs"] and "synthetic" not in base["inputs"]


def test_unimatch_loss_uses_confident_pseudo_labels_and_trains():
    import torch

    from augpaint_core.segmentation.segmenters import build_segmenter
    from augpaint_core.segmentation.train_seg import unimatch_loss

    torch.manual_seed(0)
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4))
    model = build_segmenter(cfg, 2).train()
    xu = torch.rand(4, 3, 32, 32) * 2 - 1
    gen = torch.Generator().manual_seed(0)
    loss, ratio = unimatch_loss(model, "unet", xu, gen, threshold=0.0)  # every pixel pseudo-labeled
    assert ratio == 1.0 and loss.item() > 0
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    none, r0 = unimatch_loss(model, "unet", xu, gen, threshold=0.999999)
    assert r0 < 1.0 and none.item() <= loss.item()


def test_semi_supervised_training_reads_the_unlabeled_images():
    images, labels = _tiny_pair()
    unlabeled = np.random.default_rng(1).integers(0, 255, (6, 32, 32, 3)).astype(np.uint8)
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4), max_steps=3, batch_size=2, val_checks=1,
                    semi_supervised="unimatch", unimatch_threshold=0.3, unimatch_batch_size=2)
    m_semi, _ = fit_segmenter(images, labels, 2, cfg, seed=0, unlabeled=unlabeled)
    m_sup, _ = fit_segmenter(images, labels, 2, cfg.model_copy(update={"semi_supervised": "none"}), seed=0,
                             unlabeled=unlabeled)
    diff = sum((a - b).abs().sum().item() for a, b in zip(m_semi.state_dict().values(), m_sup.state_dict().values())
               if a.dtype.is_floating_point)
    assert diff > 0  # the consistency loss changed the weights


def _tiny_pair():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 60, (2, 32, 32, 3)).astype(np.uint8)
    labels = np.zeros((2, 32, 32), np.uint8)
    labels[:, 8:20, 10:22] = 1
    images[labels == 1] += 120
    return images, labels


def test_killed_segmenter_training_resumes_from_its_s3_checkpoint(pipeline_artifacts, s3_bucket, tmp_path):
    """A pod killed midway (SIGKILL, no clean-up): the next pod continues from the checkpoint in S3 and ends
    with the weights of an uninterrupted run."""
    import os
    import subprocess
    import sys
    import time

    import torch

    from augpaint_core.config import parse_config
    from augpaint_core.infra import storage
    from augpaint_core.segmentation.train_seg import train_seg
    from tests.conftest import REPO, tiny_dict

    uri = f"s3://{s3_bucket}/ckpt/train-seg"
    d = tiny_dict()
    d["seg"].update(epochs=1000, max_steps=300, val_checks=1)  # 300 steps: the budget, not the epochs
    straight = parse_config(d, "straight")
    d["training"] = {"checkpoint_every": 10, "checkpoint_dir": uri}
    cfg = parse_config(d, "resumable")
    script = ("import sys, yaml; from augpaint_core.config import parse_config; "
              "from augpaint_core.segmentation.train_seg import train_seg; "
              "train_seg(parse_config(yaml.safe_load(sys.argv[1]), 'pod'), sys.argv[2], sys.argv[3])")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    pod = subprocess.Popen([sys.executable, "-c", script, cfg.to_yaml(), str(pipeline_artifacts["dataset"]),
                            str(tmp_path / "first-pod")], env=env, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.time() + 300
    while not seen and time.time() < deadline and pod.poll() is None:
        seen = [u for u in storage.list_uris(uri) if u.endswith("/artifact.json")] if storage.exists(uri) else []
        time.sleep(0.2)
    pod.kill()  # SIGKILL: the pod is gone, only S3 survives
    pod.wait()
    assert seen, f"no checkpoint appeared in {uri}: {pod.stderr.read()[-2000:]}"
    assert not (tmp_path / "first-pod").exists()  # nothing that looks finished
    train_seg(cfg, pipeline_artifacts["dataset"], tmp_path / "second-pod")
    meta = read_artifact_meta(tmp_path / "second-pod")
    assert 10 <= meta["resumed_from_step"] < 300 and meta["resumed_from_step"] % 10 == 0
    assert meta["history"][-1]["step"] == 299  # it finished the budget from there, not from step 0
    train_seg(straight, pipeline_artifacts["dataset"], tmp_path / "straight")
    a = torch.load(tmp_path / "straight" / "segmenter.pt", weights_only=True)
    b = torch.load(tmp_path / "second-pod" / "segmenter.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise on CPU


def test_streamed_training_matches_in_memory_training_for_any_worker_count():
    """Batches from a lazy view through DataLoader workers train exactly what in-memory arrays trained."""
    import torch

    from augpaint_core.data.dataset import IndexedView
    from augpaint_core.runtime import DevicePolicy

    rng = np.random.default_rng(3)
    images = rng.integers(0, 255, (9, 32, 32, 3)).astype(np.uint8)
    labels = (rng.random((9, 32, 32)) > 0.7).astype(np.uint8)
    cfg = SegConfig(features=(4, 8, 8, 16, 16, 4), max_steps=5, batch_size=2, val_checks=2)
    rows = np.array([8, 0, 3, 5, 1, 7, 2])
    val = (images[[4, 6]], labels[[4, 6]])
    ref, h_ref = fit_segmenter(images[rows], labels[rows], 2, cfg, seed=1, val=val)
    for workers in (0, 2):
        policy = DevicePolicy(torch.device("cpu"), workers=workers, batch_size=1)  # 1 image per eval forward
        m, h = fit_segmenter(IndexedView([(images, rows)]), IndexedView([(labels, rows)]), 2, cfg, seed=1,
                             val=(IndexedView([(images, np.array([4, 6]))]), IndexedView([(labels, np.array([4, 6]))])),
                             policy=policy)
        assert [r["val_dice"] for r in h] == [r["val_dice"] for r in h_ref]
        assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), m.state_dict().values())), workers
