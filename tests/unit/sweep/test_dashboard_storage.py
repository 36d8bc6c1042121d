"""Which study storage `make optuna-dashboard` opens: STORAGE as given, else the sweep folder's
recorded one, else the newest sweep under multirun/; a clear error otherwise."""

from __future__ import annotations

import json
import os

import pytest

from sweep_sft.errors import ConfigError
from sweep_sft.names import OPTUNA_FILE
from sweep_sft.sweep.dashboard import open_dashboard_storage, resolve_storage


def test_a_given_storage_wins(tmp_path):
    assert resolve_storage("sqlite:///x.db", str(tmp_path), tmp_path) == "sqlite:///x.db"


def test_the_sweep_folder_recorded_storage_then_its_journal(tmp_path):
    (tmp_path / OPTUNA_FILE).write_text(json.dumps({"storage": "postgresql://db/optuna"}))
    assert resolve_storage(None, str(tmp_path)) == "postgresql://db/optuna"
    (tmp_path / OPTUNA_FILE).unlink()
    (tmp_path / "optuna.journal").write_text("")
    assert resolve_storage(None, str(tmp_path)) == str((tmp_path / "optuna.journal").resolve())


def test_the_newest_sweep_under_multirun(tmp_path):
    old, new = tmp_path / "2026-01-01" / "a", tmp_path / "2026-01-02" / "b"
    for i, d in enumerate((old, new)):
        d.mkdir(parents=True)
        (d / "optuna.journal").write_text("")
        os.utime(d / "optuna.journal", (i, i))
    assert resolve_storage(None, None, tmp_path) == str((new / "optuna.journal").resolve())


def test_no_storage_names_what_to_set(tmp_path):
    with pytest.raises(ConfigError, match=r"STORAGE=.*SWEEP=.*no optuna5 sweep folder under"):
        resolve_storage(None, None, tmp_path / "multirun")
    with pytest.raises(ConfigError, match=rf"SWEEP={tmp_path}: no {OPTUNA_FILE} .* STORAGE="):
        resolve_storage(None, str(tmp_path))
    with pytest.raises(ConfigError, match=r"SWEEP=.*nope: no such sweep folder"):
        resolve_storage(None, str(tmp_path / "nope"))
    (tmp_path / OPTUNA_FILE).write_text("[1]")
    with pytest.raises(ConfigError, match="is not a JSON object"):
        resolve_storage(None, str(tmp_path))


def test_a_missing_journal_is_refused_not_created(tmp_path):
    with pytest.raises(ConfigError, match="STORAGE=.*no such journal file"):
        open_dashboard_storage(str(tmp_path / "x.journal"))
    assert not (tmp_path / "x.journal").exists()


def test_the_command_exits_with_the_error_before_serving(tmp_path, monkeypatch, capsys):
    from sweep_sft.sweep.dashboard import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["--port", "1"])
    assert exit_.value.code == 2
    assert "set STORAGE=<journal file or database URL> (--storage) or SWEEP=<sweep folder>" in capsys.readouterr().err
