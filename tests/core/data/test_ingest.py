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
