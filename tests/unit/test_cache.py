"""The build-once cache and the folder writes it shares with convert_gguf: built once, in place
whole or not at all."""

from __future__ import annotations

import pytest

from sweep_sft import cache


def test_an_entry_is_built_once_per_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("SWEEP_SFT_CACHE", str(tmp_path))
    calls = []

    def build(folder):
        calls.append(folder)
        (folder / "x.txt").write_text("x")

    first = cache.build_once("thing", {"a": 1}, build)
    assert cache.build_once("thing", {"a": 1}, build) == first and len(calls) == 1
    assert (first / "x.txt").read_text() == "x" and (first / ".complete").exists()
    assert cache.build_once("thing", {"a": 2}, build) != first and len(calls) == 2


def test_a_failed_write_leaves_the_old_folder_and_no_partial_one(tmp_path):
    target = tmp_path / "out"
    cache.write_folder(target, lambda folder: (folder / "old.txt").write_text("old"))

    def broken(folder):
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        cache.write_folder(target, broken)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    cache.write_folder(target, lambda folder: (folder / "new.txt").write_text("new"))
    assert [p.name for p in target.iterdir()] == ["new.txt"]
