"""The stage registry behind the CLI and the KFP components."""
import pytest

from augpaint_core.errors import AugPaintError
from augpaint_core.stages import STAGES, run_stage_or_exit, stage_function


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_resolves_to_a_function(stage):
    fn = stage_function(stage)
    assert callable(fn) and fn.__name__ == STAGES[stage].split(":")[1]


def test_unknown_stage_is_refused_with_the_choices():
    with pytest.raises(AugPaintError, match="unknown stage 'paint'.*preprocess"):
        stage_function("paint")


@pytest.mark.parametrize("config_yaml, names", [("ae:\n  max_steps: -1\n", "ae.max_steps"), ("{}\n", "no-dataset")])
def test_component_entry_point_turns_errors_into_one_line(tmp_path, capsys, config_yaml, names):
    with pytest.raises(SystemExit) as exc:
        run_stage_or_exit("train-ae", config_yaml, str(tmp_path / "ae"), tracking_uri="none",
                          dataset=str(tmp_path / "no-dataset"))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("augpaint train-ae: error:") and names in err[0]
    assert not (tmp_path / "ae").exists()


def test_stage_sections_cover_what_each_stage_reads():
    """A cached task gets only STAGE_SECTIONS; a stage reading another section would silently see defaults."""
    import re

    from augpaint_core import stages

    from pathlib import Path

    root = Path(stages.__file__).parent
    for stage, sections in stages.STAGE_SECTIONS.items():
        module = stages.STAGES[stage].split(":")[0].replace(".", "/") + ".py"
        read = set(re.findall(r"\bcfg\.([a-z_]+)\b", (root / module).read_text()))
        top = {f for f in read if f in stages.AugPaintConfig.model_fields}
        assert top <= set(sections) | {"seed", "name"}, (stage, sorted(top - set(sections)))
    # run_stage's own input checks (stages.py) read the config of every stage too.
    own = set(re.findall(r"\bcfg\.([a-z_]+)\b", (root / "stages.py").read_text())) & set(stages.AugPaintConfig.model_fields)
    for stage, sections in stages.STAGE_SECTIONS.items():
        assert own <= set(sections) | {"seed", "name"}, (stage, sorted(own - set(sections)))


def test_stage_config_text_keeps_only_the_stage_sections(tiny_cfg):
    import json

    from augpaint_core.config import config_from_yaml_text
    from augpaint_core.stages import stage_config_text

    other = tiny_cfg.model_copy(update={"seg": tiny_cfg.seg.model_copy(update={"lr": 1e-2})})
    for stage in ("preprocess", "train-ae", "train-ldm", "inpaint"):
        assert stage_config_text(tiny_cfg, stage) == stage_config_text(other, stage), stage
    for stage in ("filter", "train-seg", "evaluate"):
        assert stage_config_text(tiny_cfg, stage) != stage_config_text(other, stage), stage
    text = stage_config_text(tiny_cfg.to_yaml(), "train-ae")
    assert set(json.loads(text)) == {"name", "seed", "data", "ae", "training", "runtime"}
    assert config_from_yaml_text(text).ae == tiny_cfg.ae  # loads back as a full config
