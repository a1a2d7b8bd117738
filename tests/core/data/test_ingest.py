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
