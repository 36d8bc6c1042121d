"""Standalone evaluation of a trial folder saved before `eval.general` existed: its trial probed
the embedded set whatever the model (`auto` would now pick base_answers for model=local), so it is
evaluated on that, with a note; a saved eval.general or one on the command line is taken as it is."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from sweep_sft.config.compose import compose
from sweep_sft.evaluate.standalone import load_config
from sweep_sft.evaluate.target import Target


def saved(tmp_path, overrides: list[str], drop_general: bool) -> Target:
    config = compose(overrides)
    if drop_general:
        del config.eval.general
    file = tmp_path / "config.yaml"
    file.write_text(OmegaConf.to_yaml(config))
    assert ("general:" in file.read_text()) is not drop_general
    return Target(file, None, None, tmp_path)


LOCAL = ["model=local", "model.name_or_path=/models/some-instruct"]


def test_a_config_saved_before_eval_general_is_evaluated_on_the_embedded_probe(tmp_path, capsys):
    config = load_config(saved(tmp_path, LOCAL, drop_general=True), [])
    assert config.eval.general.source == "embedded"
    err = capsys.readouterr().err
    assert f"note: {tmp_path / 'config.yaml'} has no eval.general (saved before it existed)" in err
    assert len([line for line in err.splitlines() if "eval.general" in line]) == 1


@pytest.mark.parametrize(
    "drop_general,overrides,source",
    [
        (False, [], "auto"),  # saved with eval.general: as saved
        (True, ["eval.general.source=base_answers"], "base_answers"),  # this command line chooses
    ],
)
def test_a_saved_or_given_general_source_is_kept_without_a_note(tmp_path, capsys, drop_general, overrides, source):
    assert load_config(saved(tmp_path, LOCAL, drop_general), overrides).eval.general.source == source
    assert "eval.general" not in capsys.readouterr().err


def test_no_note_when_the_old_trial_ran_no_general_probe(tmp_path, capsys):
    config = load_config(saved(tmp_path, [*LOCAL, "eval.general_probe=false"], drop_general=True), [])
    assert config.eval.general.source == "embedded"
    assert "eval.general" not in capsys.readouterr().err
