import torch
from diffusers import UNet2DModel, VQModel

from augpaint_core.infra.artifacts import read_artifact_meta
from augpaint_core.config import AEConfig
from augpaint_core.generative.models import build_vqmodel
from augpaint_core.segmentation.segmenters import load_segmenter


def test_vqmodel_is_f4():
    ae = build_vqmodel(AEConfig(block_channels=[8, 16, 16], layers_per_block=1, num_embeddings=16), 32)
    z = ae.encode(torch.zeros(1, 3, 32, 32)).latents
    assert z.shape == (1, 3, 8, 8)


def test_saved_models_load_with_diffusers_alone(pipeline_artifacts):
    a = pipeline_artifacts
    ae = VQModel.from_pretrained(a["ae"] / "vqmodel")
    meta = read_artifact_meta(a["ae"], kind="model")
    assert ae.config.scaling_factor == meta["scaling_factor"] != 0.18215
    unet = UNet2DModel.from_pretrained(a["ldm"] / "unet")
    assert unet.config.in_channels == ae.config.latent_channels
    assert unet.config.sample_size * 4 == a["cfg"].data.image_size
    seg, info = load_segmenter(a["baseline"])
    assert info["num_classes"] == 4


def test_training_records_history_and_inputs(pipeline_artifacts):
    a = pipeline_artifacts
    for name, stage in (("ae", "train-ae"), ("ldm", "train-ldm"), ("baseline", "train-seg")):
        meta = read_artifact_meta(a[name], kind="model")
        assert meta["stage"] == stage
        assert meta["inputs"]["dataset"]["content_sha256"] == read_artifact_meta(a["dataset"])["content_sha256"]
        assert meta["history"]


def test_ae_loss_drops_on_a_fixed_batch(tiny_cfg, tmp_path):
    """A tiny AE overfits: enough steps on the tiny data cut the L1 loss clearly."""
    from augpaint_core.data.preprocess import preprocess
    from augpaint_core.generative.train_ae import train_ae

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.ae.max_steps = 60
    ds = preprocess(cfg, tmp_path / "ds")
    hist = read_artifact_meta(train_ae(cfg, ds, tmp_path / "ae"))["history"]
    assert hist[-1]["l1"] < 0.6 * hist[0]["l1"]


def test_latent_scale_is_one_over_the_std_of_the_training_latents(pipeline_artifacts):
    """The LDM sees unit-std latents: the saved scale is 1/std of the encoded training slices (not SD's 0.18215)."""
    import pytest

    from augpaint_core.data.dataset import load_dataset
    from augpaint_core.generative.train_ae import encode_latents
    from augpaint_core.runtime import to_tensor

    a = pipeline_artifacts
    ae = VQModel.from_pretrained(a["ae"] / "vqmodel").eval()
    ds = load_dataset(a["dataset"])
    train = ds.where(split="train")
    with torch.no_grad():
        z = encode_latents(ae, to_tensor(ds.images[train]))
    assert ae.config.scaling_factor == pytest.approx(1.0 / float(z.std()), rel=1e-3)
    assert float((z * ae.config.scaling_factor).std()) == pytest.approx(1.0, rel=1e-3)
