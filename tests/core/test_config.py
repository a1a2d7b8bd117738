from pathlib import Path

import pytest

from augpaint_core.config import load_config, parse_config
from augpaint_core.errors import AugPaintError
from tests.conftest import REPO, tiny_dict


@pytest.mark.parametrize("preset", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_presets_load(preset: Path):
    cfg = load_config(preset)
    assert cfg.data.image_size % 4 == 0
    assert cfg.inpaint.num_inference_steps > 0


def test_paper_preset_carries_paper_hyperparameters():
    cfg = load_config(REPO / "configs" / "paper.yaml")
    assert cfg.data.image_size == 256
    assert cfg.ae.block_channels == [128, 256, 512] and cfg.ae.num_embeddings == 8192
    assert cfg.inpaint.num_inference_steps == 50 and cfg.inpaint.samples_per_pair == 5
    assert cfg.seg.lr == 5e-4 and cfg.seg.batch_size == 4 and cfg.seg.epochs == 120
    assert cfg.seg.features == (64, 128, 256, 512, 1024, 64)
    assert cfg.filter.keep_fraction == 0.5
    assert cfg.inpaint.eta == 1.0  # Algorithm 1 is stochastic DDIM (its tau_t term)
    assert cfg.ldm.hflip is False  # section 4.4: "without flipping or rotation"
    assert cfg.data.official_test_images is False  # trained "solely with the available training set"


def test_negative_step_count_names_the_field(tmp_path):
    d = tiny_dict()
    d["inpaint"]["num_inference_steps"] = -5
    p = tmp_path / "bad.yaml"
    import yaml

    p.write_text(yaml.safe_dump(d))
    with pytest.raises(AugPaintError) as e:
        load_config(p)
    msg = str(e.value)
    assert "inpaint.num_inference_steps" in msg and str(p) in msg and "\n" not in msg


@pytest.mark.parametrize("path,value,field", [
    (("seg", "max_steps"), 0, "seg.max_steps"),
    (("filter", "keep_fraction"), 1.5, "filter.keep_fraction"),
    (("data", "image_size"), 30, "image_size"),
    (("ae", "block_channels"), [8, 16], "ae.block_channels"),
    (("ldm", "attention"), [True], "ldm.attention"),
    (("seg", "bogus"), 1, "seg.bogus"),
    (("data", "format"), "dicom", "data.format"),
    (("data", "split"), [0.7, 0.0, 0.3], "data.split"),
    (("data", "ct_window"), [275, -125], "data.ct_window"),
    (("data", "channels"), ["a", "b", "c", "d"], "data.channels"),
    (("data", "on_error"), "ignore", "data.on_error"),
])
def test_invalid_values_name_the_field(path, value, field):
    d = tiny_dict()
    d[path[0]][path[1]] = value
    with pytest.raises(AugPaintError, match=field.replace(".", r"\.")):
        parse_config(d, "t")


def test_override_and_flatten(tiny_cfg):
    cfg = parse_config(tiny_dict(), "t", overrides=["inpaint.samples_per_pair=7", "seed=3"])
    assert cfg.inpaint.samples_per_pair == 7 and cfg.seed == 3
    flat = cfg.flat()
    assert flat["inpaint.samples_per_pair"] == 7 and flat["data.phantom.num_cases"] == 8


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(AugPaintError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed")
    with pytest.raises(AugPaintError, match="not valid YAML"):
        load_config(bad)


def test_dataset_presets_extend_the_paper_preset():
    paper = load_config(REPO / "configs" / "paper.yaml")
    want = {"acdc": ("acdc", (0.7, 0.15, 0.15)), "brats": ("msd", (0.9, 0.05, 0.05)),
            "synapse": ("synapse", (2, 1, 1)), "isic": ("isic", (0.8, 0.2, 0.0))}
    for name, (fmt, split) in want.items():
        cfg = load_config(REPO / "configs" / f"{name}.yaml")
        assert (cfg.data.format, tuple(cfg.data.split), cfg.name) == (fmt, split, name)
        budget = {"epochs", "max_steps"}  # step budgets are sized to each dataset (ae/ldm max_steps)
        assert cfg.ldm.model_dump(exclude=budget) == paper.ldm.model_dump(exclude=budget)  # the paper's models
        assert cfg.seg == paper.seg
        assert cfg.inpaint.mask_flip == (name == "brats")  # paper Table 4: flipping for BraTS
        assert cfg.inpaint.eta == paper.inpaint.eta == 1.0
    assert load_config(REPO / "configs" / "isic.yaml").data.num_labeled == 10
    assert load_config(REPO / "configs" / "brats.yaml").data.channels == ["FLAIR"]


def test_extends_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nseed: 1\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(AugPaintError, match="loops"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(AugPaintError, match="missing.yaml: config file not found .extended by"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("seed: 4\ndata: {image_size: 64}\n")
    (tmp_path / "e.yaml").write_text("extends: d.yaml\ndata: {num_labeled: 3}\n")
    cfg = load_config(tmp_path / "e.yaml")
    assert (cfg.seed, cfg.data.image_size, cfg.data.num_labeled) == (4, 64, 3)
