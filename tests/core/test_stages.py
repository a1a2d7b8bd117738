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
