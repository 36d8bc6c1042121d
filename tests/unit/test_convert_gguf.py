"""python -m sweep_sft.convert_gguf: its argument and file errors (the conversion itself is
exercised by the real-model test, tests/integration/trial/test_real_model.py)."""

from __future__ import annotations

import pytest

from sweep_sft import convert_gguf
from sweep_sft.errors import ConfigError


def test_a_missing_gguf_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.gguf: no such gguf file"):
        convert_gguf.convert(tmp_path / "nope.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv", [["out"], ["model.gguf", "out", "--smollm2"]])
def test_one_source_exactly(argv, capsys):
    with pytest.raises(SystemExit):
        convert_gguf.main(argv)
    assert "give a .gguf file or --smollm2" in capsys.readouterr().err


def test_the_wheel_file_is_found_without_importing_the_package():
    path = convert_gguf.smollm2_gguf()
    assert path.name == convert_gguf.SMOLLM2_FILE and path.is_file()
