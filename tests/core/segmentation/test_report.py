"""report.html: self-contained, and rendered by a real browser (headless Chromium) with every image decoded."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from augpaint_core.data.dataset import load_dataset
from augpaint_core.segmentation.report import overlay, png_data_uri

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium; "
                                                             ".ci/run installs it)")


@pytest.fixture(scope="module")
def report_dir(pipeline_artifacts, tmp_path_factory) -> Path:
    """Evaluate again, this time with the synthetic and filtered sets, so the page has every section."""
    from augpaint_core.segmentation.evaluate import evaluate

    a = pipeline_artifacts
    out = tmp_path_factory.mktemp("report") / "report"
    return evaluate(a["cfg"], a["dataset"], a["baseline"], a["augpaint"], out, synthetic=a["synthetic"],
                    filtered=a["filtered"])


def test_overlay_colours_only_the_labeled_pixels():
    img = np.full((4, 4, 3), 100, np.uint8)
    lab = np.zeros((4, 4), np.uint8)
    lab[1, 2] = 1
    out = overlay(img, lab)
    assert (out[lab == 0] == 100).all()
    assert tuple(out[1, 2]) == (165, 62, 88)  # halfway (62.5 rounds to even) between grey 100 and class 1's (230, 25, 75)


def test_page_is_self_contained_with_every_section(report_dir, pipeline_artifacts):
    page = (report_dir / "report.html").read_text()
    assert "<h2>Test metrics</h2>" in page and "<h2>Inpainting</h2>" in page
    assert "<h2>Segmentations on the same test slices</h2>" in page and "<h2>Generator quality</h2>" in page
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'(href|src)="(http|//|file:)', page)  # nothing fetched from outside
    m = json.loads((report_dir / "metrics.json").read_text())
    assert f"{100 * m['baseline']['mean']['dice']:.2f}" in page and f"{100 * m['augpaint']['mean']['dice']:.2f}" in page
    unit = {"mm": "mm", "px": "pixels"}[m["hd95_unit"]]
    assert f"HD95 in {unit};" in page  # the page states the unit the numbers are in (mm for the NIfTI phantom)
    scores = json.loads((pipeline_artifacts["filtered"] / "scores.json").read_text())
    kept = [s for s in scores if s["kept"]]
    assert f"{len(kept)} of {len(scores)} samples kept" in page
    assert f"kept {kept[0]['score']:.3f}" in page
    # one overlay row per shown test slice: image, ground truth, baseline, augpaint
    ds = load_dataset(pipeline_artifacts["dataset"])
    rows = min(4, len(ds.where(split="test")))
    seg = page.split("<h2>Segmentations on the same test slices</h2>")[1].split("<h2>")[0]
    assert seg.count("<img ") == 4 * rows and seg.count(">baseline<") == rows


def test_page_without_synthetic_leaves_the_grid_out(pipeline_artifacts):
    page = (pipeline_artifacts["report"] / "report.html").read_text()
    assert "<h2>Test metrics</h2>" in page and "<h2>Inpainting</h2>" not in page


def test_data_uri_enlarges_small_images():
    import base64
    import io

    from PIL import Image

    uri = png_data_uri(np.zeros((32, 32, 3), np.uint8))
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.size == (96, 96)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", *args], capture_output=True, text=True, timeout=120)


@needs_chromium
def test_chromium_decodes_every_image(report_dir, tmp_path):
    # A copy of the page with a script that records each image's decoded size once everything has loaded.
    probe = tmp_path / "probe.html"
    probe.write_text((report_dir / "report.html").read_text().replace(
        "</body>", "<script>window.addEventListener('load',()=>{document.body.setAttribute('data-imgs',"
                   "JSON.stringify([...document.images].map(i=>[i.complete,i.naturalWidth,i.naturalHeight])))})"
                   "</script></body>"))
    r = _chromium("--dump-dom", probe.as_uri())
    found = re.search(r'data-imgs="([^"]*)"', r.stdout)
    assert found, f"no probe result in Chromium's DOM dump: {r.stderr[-800:]}"
    imgs = json.loads(found.group(1).replace("&quot;", '"'))
    assert len(imgs) == (report_dir / "report.html").read_text().count("<img ")
    assert all(complete and w >= 96 and h >= 96 for complete, w, h in imgs), imgs


@needs_chromium
def test_chromium_screenshot_is_not_blank(report_dir, tmp_path):
    from PIL import Image

    shot = tmp_path / "shot.png"
    r = _chromium(f"--screenshot={shot}", "--window-size=1280,2400", (report_dir / "report.html").as_uri())
    assert shot.is_file(), r.stderr[-800:]
    px = np.asarray(Image.open(shot).convert("RGB"))
    nonwhite = (px < 240).any(-1).mean()
    assert nonwhite > 0.05, f"only {nonwhite:.1%} of the screenshot is not white"
    # the label colours of the overlays show up (class 1's red, blended)
    red = (px[..., 0] > 150) & (px[..., 1] < 120) & (px[..., 2] < 150)
    assert red.sum() > 50
