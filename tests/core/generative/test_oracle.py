"""Oracle paste: the source's kept box on a real slice of another patient, seeded."""
import numpy as np

from augpaint_core.config import parse_config
from augpaint_core.data.dataset import load_dataset
from augpaint_core.data.preprocess import preprocess
from augpaint_core.generative.masks import box_mask
from augpaint_core.generative.oracle import oracle_paste
from augpaint_core.infra.artifacts import read_artifact_meta
from tests.conftest import tiny_dict


def test_oracle_pastes_the_box_into_other_patients(tmp_path):
    cfg = parse_config(tiny_dict(), "t")
    preprocess(cfg, tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    out = oracle_paste(cfg, tmp_path / "ds", tmp_path / "o")
    syn = load_dataset(out)
    anchors = {int(i) for i in ds.where(split="train", labeled=True) if ds.labels[i].any()}
    assert len(syn.records) == len(anchors) * cfg.inpaint.samples_per_pair
    assert read_artifact_meta(out)["stage"] == "oracle-paste"
    backgrounds = set()
    for img, lab, r in zip(syn.images, syn.labels, syn.records):
        p = r["provenance"]
        s, bg = p["source_index"], p["background_index"]
        assert s in anchors and np.array_equal(lab, ds.labels[s])
        m = box_mask(lab)
        assert np.array_equal(img[m], ds.images[s][m])  # the labeled box is the source's
        assert np.array_equal(img[~m], ds.images[bg][~m])  # the rest is a real slice
        assert ds.records[bg]["split"] == "train"
        assert ds.records[bg]["patient_id"] != ds.records[s]["patient_id"]
        backgrounds.add(ds.records[bg]["case_id"])
    assert len(backgrounds) > 1
    again = load_dataset(oracle_paste(cfg, tmp_path / "ds", tmp_path / "o2"))
    assert np.array_equal(again.images, syn.images)
