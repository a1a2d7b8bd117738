import numpy as np

from augpaint_core.data.phantom import make_patient, write_phantom


def test_same_seed_same_volume_different_seed_differs():
    a_img, a_lab = make_patient(0, 3, 48, 4)
    b_img, b_lab = make_patient(0, 3, 48, 4)
    c_img, _ = make_patient(1, 3, 48, 4)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    assert not np.allclose(a_img, c_img)


def test_patients_differ_and_have_three_structures():
    img0, lab0 = make_patient(0, 0, 96, 10)
    img1, lab1 = make_patient(0, 1, 96, 10)
    assert set(np.unique(lab0)) == {0, 1, 2, 3}
    assert not np.array_equal(lab0, lab1)  # position/size vary between patients
    assert img0.shape == (96, 96, 10) and img0.dtype == np.float32
    # Some slices (beyond base/apex) have no heart: unlabeled-looking slices exist.
    assert any(not lab0[..., z].any() for z in range(10))
    # Blood pool is brighter than myocardium in every patient.
    for img, lab in ((img0, lab0), (img1, lab1)):
        assert img[lab == 3].mean() > img[lab == 2].mean()


def test_write_phantom_is_nnunet_raw(tmp_path):
    import json

    import nibabel as nib

    root = write_phantom(tmp_path / "p", seed=0, num_cases=2, slices=3, size=32)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    assert meta["channel_names"] == {"0": "MRI"} and meta["numTraining"] == 2
    img = nib.load(root / "imagesTr" / "phantom_001_0000.nii.gz")
    lab = nib.load(root / "labelsTr" / "phantom_001.nii.gz")
    assert img.shape == lab.shape == (32, 32, 3)
    assert np.allclose(img.header.get_zooms(), (1.5, 1.5, 8.0))


def test_vessels_are_unlabeled_hard_negatives_and_off_by_default():
    plain_img, plain_lab = make_patient(0, 2, 64, 8)
    zero_img, _ = make_patient(0, 2, 64, 8, vessels=0)
    assert np.array_equal(plain_img, zero_img)  # the original phantom, draw for draw
    img, lab = make_patient(0, 2, 64, 8, vessels=3)
    assert np.array_equal(lab, plain_lab)  # vessels are background
    changed = np.abs(img - plain_img) > 1e-3 * plain_img.max()
    assert changed.any() and not changed[plain_lab > 0].any()
    bright = img > np.percentile(img[plain_lab == 3], 5)  # as bright as the LV pool, outside every label
    assert (bright & changed & (plain_lab == 0)).sum() > 20


def test_vessels_out_of_range_names_the_field():
    import pytest

    from augpaint_core.config import parse_config
    from augpaint_core.errors import AugPaintError
    from tests.conftest import tiny_dict

    d = tiny_dict()
    d["data"]["phantom"] = {**d["data"].get("phantom", {}), "vessels": 9}
    with pytest.raises(AugPaintError, match="data.phantom.vessels"):
        parse_config(d, "t")
