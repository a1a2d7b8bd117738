"""``report.html``: one self-contained page of what a run did (images embedded as PNG data URIs).

Sections: the Dice/HD95 table of the evaluated models, an inpainting grid (source slices with their label
overlaid, then their synthetic samples, each marked kept or rejected with its filter score), segmentation
overlays of every model on the same test slices, and the generator-quality numbers of the filter. The
page has no scripts and no external references, so it opens from disk, from MinIO, and as the KFP UI's
HTML visualization.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

# Label colours (index = class value); background stays transparent.
PALETTE = np.array([(0, 0, 0), (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                    (145, 30, 180), (70, 240, 240)], np.float32)
MIN_TILE_PX = 96  # small slices are enlarged (nearest) so that they stay visible

CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fff}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:6px;align-items:flex-start;margin:6px 0}
figure{margin:0;text-align:center;font-size:12px}figure img{display:block;image-rendering:pixelated}
.kept img{outline:3px solid #2ca02c}.rejected img{outline:3px solid #d62728}
.kept figcaption{color:#2ca02c}.rejected figcaption{color:#d62728}
.note{color:#666;font-size:13px}
"""


def overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """``image`` (H, W, 3) uint8 with the label's classes blended in their palette colours."""
    col = PALETTE[np.asarray(label) % len(PALETTE)]
    a = (np.asarray(label) > 0)[..., None] * alpha
    return (np.asarray(image, np.float32) * (1 - a) + col * a).round().astype(np.uint8)


def png_data_uri(image: np.ndarray) -> str:
    """A (H, W, 3) uint8 image as a PNG data URI, enlarged to at least ``MIN_TILE_PX``."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8))
    scale = -(-MIN_TILE_PX // max(1, min(img.size)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(image: np.ndarray, caption: str, cls: str = "") -> str:
    c = f' class="{cls}"' if cls else ""
    return (f'<figure{c}><img alt="{html.escape(caption)}" src="{png_data_uri(image)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def metrics_table(results: dict[str, dict], class_names: list[str]) -> str:
    """Dice (%) and HD95 (the results' ``hd95_unit``) per class and their means, one row per model."""
    head = "".join(f"<th>{html.escape(c)} Dice</th>" for c in class_names) + "<th>mean Dice</th>" + \
        "".join(f"<th>{html.escape(c)} HD95</th>" for c in class_names) + "<th>mean HD95</th>"
    rows = []
    for name, r in results.items():
        d = "".join(f"<td>{100 * r['per_class'][c]['dice']:.2f}</td>" for c in class_names)
        h = "".join(f"<td>{r['per_class'][c]['hd95']:.2f}</td>" for c in class_names)
        rows.append(f'<tr><td class="l">{html.escape(name)}</td>{d}<td><b>{100 * r["mean"]["dice"]:.2f}</b></td>'
                    f'{h}<td>{r["mean"]["hd95"]:.2f}</td></tr>')
    return f'<table><tr><th class="l">model</th>{head}</tr>{"".join(rows)}</table>'


def inpainting_grid(ds, synthetic: str | Path, filtered: str | Path | None, max_sources: int = 4) -> str:
    """Rows: a source slice (label overlaid) and its synthetic samples, kept or rejected with their scores.

    Args:
        ds: the real slice dataset (the sources).
        synthetic: the unfiltered synthetic dataset (inpaint or rand-aug output).
        filtered: the filter output (its ``scores.json`` says which samples were kept); None: no decisions.
        max_sources: source slices shown.
    """
    from ..data.dataset import load_dataset

    syn = load_dataset(synthetic)
    scores = {}
    if filtered is not None and (Path(filtered) / "scores.json").is_file():
        scores = {int(s["index"]): s for s in json.loads((Path(filtered) / "scores.json").read_text())}
    by_source: dict[int, list[int]] = defaultdict(list)
    for i, r in enumerate(syn.records):
        by_source[int(r.get("provenance", {}).get("source_index", -1))].append(i)
    rows = []
    for src in list(by_source)[:max_sources]:
        figs = []
        if 0 <= src < len(ds.records):
            figs.append(_figure(overlay(ds.images[src], ds.labels[src]), f"source {ds.records[src]['case_id']} slice {ds.records[src]['slice_index']}"))
        for i in by_source[src]:
            s = scores.get(i)
            if s is None:
                figs.append(_figure(np.asarray(syn.images[i]), f"sample {i}"))
                continue
            why = f" ({', '.join(s['rejected'])})" if s.get("rejected") else ""
            state = "kept" if s["kept"] else "rejected"
            figs.append(_figure(np.asarray(syn.images[i]), f"{state} {s['score']:.3f}{why}", state))
        rows.append(f'<div class="grid">{"".join(figs)}</div>')
    total = len(syn.records)
    kept = sum(1 for s in scores.values() if s["kept"])
    note = (f"{kept} of {total} samples kept by the filter (score: the scorer's mean probability of the "
            "label inside the labeled pixels)." if scores else f"{total} samples (no filter decisions given).")
    return f'<p class="note">{html.escape(note)}</p>' + "".join(rows)


def segmentation_overlays(ds, models: dict[str, str | Path], max_slices: int = 4) -> str:
    """Rows: the test slices with the most foreground; columns: image, ground truth, each model's prediction."""
    from .segmenters import load_segmenter
    from .train_seg import predict

    test = ds.where(split="test")
    if len(test) == 0:
        return '<p class="note">No test slices.</p>'
    fg = np.array([int((np.asarray(ds.labels[i]) > 0).sum()) for i in test])
    rows = np.sort(test[np.argsort(-fg, kind="stable")[:max_slices]])
    images, labels = np.asarray(ds.images[rows]), np.asarray(ds.labels[rows])
    preds = {name: predict(load_segmenter(path)[0], images) for name, path in models.items()}
    out = []
    for j, i in enumerate(rows):
        tag = f"{ds.records[i]['case_id']} slice {ds.records[i]['slice_index']}"
        figs = [_figure(images[j], tag), _figure(overlay(images[j], labels[j]), "ground truth")]
        figs += [_figure(overlay(images[j], p[j]), name) for name, p in preds.items()]
        out.append(f'<div class="grid">{"".join(figs)}</div>')
    legend = ", ".join(f'<span style="color:rgb{tuple(int(x) for x in PALETTE[k])}">&#9632;</span> '
                       f"{html.escape(c)}" for k, c in enumerate(ds.class_names, start=1))
    return f'<p class="note">Colours: {legend}</p>' + "".join(out)


def quality_table(quality: dict) -> str:
    """The filter's generator-quality numbers (realism, diversity, memorization, acceptance)."""
    rows = []
    for k, v in quality.items():
        if isinstance(v, bool) or v is None:
            val = "-" if v is None else str(v)
        elif isinstance(v, (int, float)):
            val = f"{v:.4g}"
        elif isinstance(v, dict):
            val = ", ".join(f"{a}: {b}" for a, b in v.items())
        else:
            val = str(v)
        rows.append(f'<tr><td class="l">{html.escape(k)}</td><td>{html.escape(val)}</td></tr>')
    return f'<table><tr><th class="l">measure</th><th>value</th></tr>{"".join(rows)}</table>'


def report_html(title: str, ds, results: dict[str, dict], models: dict[str, str | Path], *,
                synthetic: str | Path | None = None, filtered: str | Path | None = None, intro: str = "",
                max_sources: int = 4, max_slices: int = 4) -> str:
    """The whole page as one HTML string.

    Args:
        title: page title.
        ds: real slice dataset (test slices, and the inpainting sources).
        results: model name -> ``evaluate_model`` result.
        models: model name -> segmenter artifact, for the overlays (same order as the table).
        synthetic: unfiltered synthetic dataset; None leaves the inpainting grid out.
        filtered: filter output (``scores.json``, ``quality.json``); None leaves decisions and quality out.
        intro: one paragraph of plain text under the title.
        max_sources: source slices in the inpainting grid.
        max_slices: test slices in the overlays.
    """
    parts = [f"<h1>{html.escape(title)}</h1>"]
    if intro:
        parts.append(f"<p>{html.escape(intro)}</p>")
    first = next(iter(results.values()), {})
    unit = {"mm": "mm", "px": "pixels"}.get(first.get("hd95_unit", "px"), first.get("hd95_unit", "px"))
    over = " (the headline mean is over the evaluation regions)" if first.get("mean_over") == "regions" else ""
    parts += ["<h2>Test metrics</h2>", metrics_table(results, ds.class_names),
              f'<p class="note">Dice in %, HD95 in {unit}; mean over test cases (volumes){over}.</p>']
    if synthetic is not None:
        parts += ["<h2>Inpainting</h2>", inpainting_grid(ds, synthetic, filtered, max_sources)]
    parts += ["<h2>Segmentations on the same test slices</h2>", segmentation_overlays(ds, models, max_slices)]
    qpath = Path(filtered) / "quality.json" if filtered is not None else None
    if qpath is not None and qpath.is_file():
        parts += ["<h2>Generator quality</h2>", quality_table(json.loads(qpath.read_text())),
                  '<p class="note">fd_*: Fréchet distance of scorer features to the real training slices '
                  "(fd_real_halves: between two halves of the real slices, for scale); msssim_*: MS-SSIM (lower "
                  "= more diverse); nn_distance_*: nearest real slice outside the kept box (memorization).</p>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + html.escape(title) +
            f"</title><style>{CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
