"""ACDC: ``patientNNN/{Info.cfg, patientNNN_frameFF.nii.gz, patientNNN_frameFF_gt.nii.gz}``.

The ED and ES frames named in ``Info.cfg`` are two cases of one patient (they
always share a split). Labels: 1 RV, 2 MYO, 3 LV. When a ``training/`` folder
exists only its 100 patients are used, as in the paper (the 50 ``testing/``
patients are left out); otherwise every patient folder found. A frame without
``_gt`` becomes unlabeled data.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ...errors import AugPaintError
from .common import Case, Problem, Source, find_dirs, read_volume_case

CLASSES = ["RV", "MYO", "LV"]
PATIENT = re.compile(r"^patient\d+$")


def parse_info(path: Path) -> dict[str, str]:
    """``Info.cfg`` (``Key: value`` lines) -> dict."""
    out = {}
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise AugPaintError(f"{path}: line {n} is not 'Key: value': {line!r}")
        k, v = line.split(":", 1)
        out[k.strip()] = v.strip()
    return out


def patient_dirs(root: Path) -> list[Path]:
    found = [d for d in find_dirs(root, "patient*") if PATIENT.match(d.name) and (d / "Info.cfg").is_file()]
    training = [d for d in found if d.parent.name == "training"]
    return sorted(training or found, key=lambda d: d.name)


def scan(root: Path, channels: list[str] | None = None) -> Source:
    """Find the ED/ES cases of every patient below ``root``."""
    pats = patient_dirs(root)
    if not pats:
        raise AugPaintError(f"{root}: no ACDC patient folders (patientNNN/Info.cfg) found")
    seen: dict[str, Path] = {}
    cases, problems = [], []
    for d in pats:
        pid = d.name
        if pid in seen:
            problems.append(Problem(str(d), pid, f"{d}: patient {pid} also found at {seen[pid]}"))
            continue
        seen[pid] = d
        try:
            info = parse_info(d / "Info.cfg")
            frames = {"ED": int(info["ED"]), "ES": int(info["ES"])}
        except (KeyError, ValueError) as err:
            problems.append(Problem(str(d / "Info.cfg"), pid, f"{d / 'Info.cfg'}: needs integer ED and ES "
                                                               f"entries ({type(err).__name__}: {err})"))
            continue
        except AugPaintError as err:
            problems.append(Problem(str(d / "Info.cfg"), pid, str(err)))
            continue
        for phase, f in frames.items():
            img = d / f"{pid}_frame{f:02d}.nii.gz"
            gt = d / f"{pid}_frame{f:02d}_gt.nii.gz"
            if not img.is_file():
                problems.append(Problem(str(img), f"{pid}_{phase}", f"{img}: {phase} frame {f} named in "
                                                                     f"Info.cfg is missing"))
                continue
            if not gt.is_file():  # ED/ES frames are labeled in ACDC: a missing _gt is an error, not unlabeled data
                problems.append(Problem(str(gt), f"{pid}_{phase}", f"{gt}: label of the {phase} frame is missing"))
                continue
            cases.append(Case(f"{pid}_{phase}", pid, (str(img),), str(gt), params=(("frame", f), ("phase", phase))))
    return Source("acdc", "ACDC", str(root), list(CLASSES), cases, problems=problems,
                  reader={"allowed": [0, 1, 2, 3]})


def read(case: Case, reader: dict, size: int) -> tuple[np.ndarray, np.ndarray]:
    return read_volume_case(case, ["MRI"], [0], reader, size, set(reader["allowed"]), None,
                            "the ACDC labels (0 bg, 1 RV, 2 MYO, 3 LV)")
