"""The core's shape: grouped by phase, no phase imports a higher one, and no Kubeflow import anywhere."""
import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "augpaint_core"
# Lower number = lower phase. config, errors, runtime and infra sit below every phase; the top-level
# orchestration modules (stages, cli, experiment, expansion) above them all.
RANK = {"config": 0, "errors": 0, "runtime": 0, "infra": 0, "data": 1, "generative": 2, "segmentation": 3}
TOP = 4


def _imports(path: Path) -> list[str]:
    """Absolute names of every module imported anywhere in a file (also inside functions)."""
    pkg = ".".join(path.relative_to(CORE.parent).with_suffix("").parts[:-1])
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            out += [f"{base}.{a.name}" if not node.module else base for a in node.names]
    return out


def test_core_is_grouped_by_phase():
    flat = sorted(p.stem for p in CORE.glob("*.py") if p.stem != "__init__")
    assert flat == ["cli", "config", "errors", "expansion", "experiment", "runtime", "stages"]
    assert sorted(p.name for p in CORE.iterdir() if p.is_dir() and p.name != "__pycache__") == \
        ["data", "generative", "infra", "segmentation"]


def test_no_phase_imports_a_higher_phase_and_no_kfp():
    bad = []
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE)
        me = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        my_rank = RANK.get(me, TOP)
        for name in _imports(path):
            assert name.split(".")[0] != "kfp", f"{rel} imports {name}"
            if not name.startswith("augpaint_core."):
                continue
            unit = name.split(".")[1]
            if RANK.get(unit, TOP) > my_rank:
                bad.append(f"{rel} -> {name}")
    assert not bad, "imports from a lower phase into a higher one:\n" + "\n".join(bad)


# Modules whose tests live in a shared file (path relative to tests/).
SHARED = {"generative/train_ae.py": "core/generative/test_training.py",
          "generative/train_ldm.py": "core/generative/test_training.py",
          "expansion.py": "kfp/test_expansion_local.py"}


def test_tests_mirror_the_core():
    tests = Path(__file__).resolve().parents[1]
    for path in CORE.rglob("*.py"):
        rel = path.relative_to(CORE)
        if path.stem in ("__init__", "errors") or rel.parts[:2] == ("data", "ingest"):
            continue  # errors is one exception class; the ingest adapters share core/data/test_ingest.py
        want = tests / SHARED.get(rel.as_posix(), f"core/{rel.parent}/test_{path.stem}.py".replace("/./", "/"))
        assert want.is_file(), f"no test file for augpaint_core/{rel} (expected {want.relative_to(tests)})"
    assert (tests / "core" / "data" / "test_ingest.py").is_file()
