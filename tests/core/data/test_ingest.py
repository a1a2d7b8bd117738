"""Every ingest adapter on a fake dataset of its real layout: detection, scanning and reading one case."""
import numpy as np
import pytest

from augpaint_core.config import DataConfig
from augpaint_core.data.fakedata import write_fake_dataset
from augpaint_core.data.ingest import read_case, scan

# fake format -> (adapter that must be detected, labeled training cases written)
ADAPTER = {"acdc": "acdc", "msd_brats": "msd", "synapse": "synapse", "isic": "isic", "nnunet": "nnunet",
           "nnunet_png": "nnunet"}


@pytest.mark.parametrize("fake", sorted(ADAPTER))
def test_adapter_detects_scans_and_reads_its_layout(tmp_path, fake):
    root = write_fake_dataset(fake, tmp_path / "raw", num_cases=3, seed=1)
    src = scan(root)
    assert src.format == ADAPTER[fake]
    labeled = [c for c in src.cases if c.label is not None]
    assert labeled and src.class_names
    assert len({c.case_id for c in src.cases}) == len(src.cases)
    d = DataConfig()
    reader = {**src.reader, "ct_window": list(d.ct_window), "mri_percentiles": list(d.mri_percentiles)}
    images, labels = read_case(src.format, labeled[0], reader, 32)
    assert images.dtype == np.uint8 and images.ndim == 4 and images.shape[1:] == (32, 32, 3)
    assert labels.dtype == np.uint8 and labels.shape == images.shape[:3]
    assert 0 < labels.max() <= len(src.class_names)


@pytest.mark.parametrize("perm", [(0, 1, 2), (2, 0, 1)])
def test_slice_spacing_is_the_header_spacing_after_the_resize(tmp_path, perm):
    """HD95 in mm needs (through-plane, row, column) spacing of the stacked slices, whatever the file's axis order."""
    import nibabel as nib

    from augpaint_core.data.ingest import Case, slice_spacing

    zooms, shape = np.array([0.8, 0.7, 5.0]), np.array([40, 50, 6])  # RAS axes; z is the coarse one
    aff = np.eye(4)
    aff[:3, :3] = 0
    for file_axis, ras_axis in enumerate(perm):  # file axis i stores RAS axis perm[i]
        aff[ras_axis, file_axis] = zooms[ras_axis]
    f = tmp_path / "img.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros(tuple(shape[list(perm)]), np.float32), aff), f)
    sp = slice_spacing(Case("c", "c", (str(f),), None), 32)
    assert sp == pytest.approx([5.0, 0.8 * 40 / 32, 0.7 * 50 / 32])
    png = tmp_path / "x.png"
    assert slice_spacing(Case("c", "c", (str(png),), None), 32) is None


def _set_info(text: str):
    def f(root):
        (root / "training" / "patient001" / "Info.cfg").write_text(text)
    return f


def _edit_json(fn):
    def f(root):
        import json

        p = root / "dataset.json"
        meta = json.loads(p.read_text())
        fn(meta)
        p.write_text(json.dumps(meta))
    return f


def _edit_nifti_label(rel: str, value: int):
    def f(root):
        import nibabel as nib

        img = nib.load(root / rel)
        lab = np.asanyarray(img.dataobj).copy()
        lab[0, 0, 0] = value
        nib.save(nib.Nifti1Image(lab, img.affine), root / rel)
    return f


def _edit_png(rel: str, how: str):
    def f(root):
        from PIL import Image

        p = root / rel
        if how == "truncate":
            p.write_bytes(p.read_bytes()[:40])
            return
        a = np.asarray(Image.open(p)).copy()
        if how == "value":
            a[0, 0] = 9
        elif how == "shrink":
            a = a[: a.shape[0] // 2]
        elif how == "rgb":
            a = np.stack([a, a, np.zeros_like(a)], -1) if a.ndim == 2 else a
            a[..., 2] = 1
        Image.fromarray(a).save(p)
    return f


# (fake format, what breaks, how, extra config overrides, the one line that must name the file)
BAD = {
    "acdc-missing-frame": ("acdc", lambda r: (r / "training/patient001/patient001_frame01.nii.gz").unlink(), [],
                           r"patient001_frame01.nii.gz: ED frame 1 named in Info.cfg is missing"),
    "acdc-info-not-key-value": ("acdc", _set_info("ED 1\nES: 3\n"), [], r"Info.cfg: line 1 is not 'Key: value'"),
    "acdc-info-not-integer": ("acdc", _set_info("ED: one\nES: 3\n"), [], r"Info.cfg: needs integer ED and ES"),
    "msd-missing-keys": ("msd_brats", _edit_json(lambda m: m.pop("training")), [],
                         r"dataset.json: an MSD dataset.json needs 'modality', 'labels' and 'training'"),
    "msd-channel-out-of-range": ("msd_brats", _edit_json(lambda m: m["modality"].update({"4": "EXTRA"})),
                                 ["data.channels=[EXTRA]"], r"BRATS_\d+.nii.gz: has 4 channels, channel 4 requested"),
    "synapse-label-above-13": ("synapse", _edit_nifti_label("Training/label/label0001.nii.gz", 14), [],
                               r"label0001.nii.gz: label values \[14\] not in the BTCV organ labels"),
    "isic-mask-size": ("isic", _edit_png("ISIC2018_Task1_Training_GroundTruth/ISIC_0000138_segmentation.png",
                                         "shrink"), [],
                       r"ISIC_0000138_segmentation.png: mask shape .* differs from the image's"),
    "png-label-value": ("nnunet_png", _edit_png("labelsTr/fake_001.png", "value"), [],
                        r"fake_001.png: label values \[9\] not in"),
    "png-mask-size": ("nnunet_png", _edit_png("labelsTr/fake_002.png", "shrink"), [],
                      r"fake_002.png: mask shape .* differs from the image's"),
    "png-mask-rgb": ("nnunet_png", _edit_png("labelsTr/fake_003.png", "rgb"), [],
                     r"fake_003.png: mask has 3 differing channels"),
    "png-image-truncated": ("nnunet_png", _edit_png("imagesTr/fake_004_0000.png", "truncate"), [],
                            r"fake_004_0000.png: cannot read image"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_of_every_adapter_stops_with_one_line_naming_the_file(tmp_path, name):
    from augpaint_core.config import parse_config
    from augpaint_core.data.preprocess import preprocess
    from augpaint_core.errors import AugPaintError
    from tests.conftest import tiny_dict

    fake, breaks, overrides, match = BAD[name]
    root = write_fake_dataset(fake, tmp_path / "raw", num_cases=4, seed=0)
    breaks(root)
    cfg = parse_config(tiny_dict(), "tiny", ["data.split=[0.5,0.25,0.25]", *overrides])
    out = tmp_path / "out"
    with pytest.raises(AugPaintError, match=match) as err:
        preprocess(cfg, out, root)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
