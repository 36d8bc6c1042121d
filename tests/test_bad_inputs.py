"""Bad input gets a clear error before training: one table of (input, expected message fragment).

Each case runs as a user would type it (`python -m sweep_sft ...`, `python -m sweep_sft.evaluate
...`) through tests/apps/guarded.py, which makes entering the training loop fail loudly: a case
passes when the command exits non-zero, prints the fragment (the file, line or key at fault and
what was expected), prints no traceback, and never started training.

Add a row to CASES for every bad input the tool must refuse. `files` are written into the test's
folder first; `{tmp}` in an argument is that folder, `{data}` the embedded data folder and
`{trial}` a trained tiny trial (with its saved model) for the evaluation cases.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

APPS = Path(__file__).parent / "apps"
TRAINING_STARTED = "guarded: training started"  # printed by apps/guarded.py
# A trial small enough that a case which wrongly trains would still end quickly.
TINY = [
    "data.max_train_examples=32",
    "data.max_val_per_task=2",
    "trainer.max_steps=1",
    "trainer.num_threads=1",
    "trainer.progress=false",
    "tracking.enabled=false",
]


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    expect: str | list[str]
    module: str = "sweep_sft"
    files: dict[str, str | bytes] = field(default_factory=dict)
    tiny: bool = True
    needs_trial: bool = False


def _jsonl(*records: str) -> str:
    return "".join(r + "\n" for r in records)


GOOD = '{"task_type": "qa/x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
OWN_DATA = ["data=jsonl", "data.mix.sources.files.train={tmp}/train.jsonl", "data.mix.sources.files.val=null"]

CASES: list[Case] = [
    Case("negative lr", ["lr=-1"], "optimizer.lr"),
    # -- data (records, task_types, mix): rows here --

    # -- end of data --

    # -- config and model: rows here --

    # -- end of config and model --

    # -- evaluate: rows here --

    # -- end of evaluate --

    # -- sweeps: rows here --
    # A key the chosen sweeper lacks: refused before the sweep opens its parent run (test_mlflow.py
    # checks the store stays empty), naming the key and the keys that sweeper has.
    Case(
        "unknown grid sweeper key",
        ["hydra.mode=MULTIRUN", "+hydra.sweeper.bogus=1", "lr=1e-3,1e-2"],
        ["hydra.sweeper.bogus", "hydra/sweeper=grid", "max_batch_size, params, max_failure_rate"],
    ),
    Case(
        "unknown optuna5 sweeper key",
        ["hydra.mode=MULTIRUN", "hydra/sweeper=optuna5", "+hydra.sweeper.n_trail=3", "lr=1e-3,1e-2"],
        ["hydra.sweeper.n_trail", "hydra/sweeper=optuna5", "n_trials"],
    ),
    Case(
        "unknown optuna5 pruner key",
        ["hydra.mode=MULTIRUN", "hydra/sweeper=optuna5", "hydra/sweeper/pruner=median", "+hydra.sweeper.pruner.warm=2"],
        ["hydra.sweeper.pruner.warm", "hydra/sweeper/pruner=median", "n_warmup_steps"],
    ),
    Case(
        "unknown sandwich sweeper key",
        ["hydra.mode=MULTIRUN", "hydra/sweeper=sandwich", "+hydra.sweeper.probes=2"],
        ["hydra.sweeper.probes", "hydra/sweeper=sandwich", "probes_per_round"],
    ),
    Case(
        "unknown sandwich constraint key",
        ["hydra.mode=MULTIRUN", "hydra/sweeper=sandwich", "+hydra.sweeper.constraint.tolerance=0.1"],
        ["hydra.sweeper.constraint.tolerance", "metric, op, threshold, rule"],
    ),
    # -- end of sweeps --
]


@pytest.fixture(scope="module")
def trained_trial(tmp_path_factory) -> Path:
    """A tiny trained trial with its saved model, for the cases given to `sweep_sft.evaluate`."""
    out = tmp_path_factory.mktemp("trained") / "trial"
    proc = subprocess.run(
        [sys.executable, "-m", "sweep_sft", *TINY, "trainer.max_steps=2", "trainer.eval_every=0",
         "eval.max_new_tokens=4", "eval.train_recall_examples=2", f"output_dir={out}"],
        capture_output=True,
        text=True,
        cwd=out.parent,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _fill(arg: str, tmp: Path, trial: Path | None) -> str:
    from sweep_sft.embedded.build import embedded_data

    return arg.format(tmp=tmp, data=embedded_data(), trial=trial or "")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_fails_clearly_before_training(case: Case, tmp_path: Path, request) -> None:
    trial = request.getfixturevalue("trained_trial") if case.needs_trial else None
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = _fill(content, tmp_path, trial) if isinstance(content, str) and "{tmp}" in content else content
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    args = [_fill(a, tmp_path, trial) for a in case.args]
    if case.module == "sweep_sft" and case.tiny:
        args = [*TINY, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    env = {**os.environ, "SWEEP_SFT_CACHE": os.environ.get("SWEEP_SFT_CACHE", str(Path.home() / ".cache/sweep_sft"))}
    proc = subprocess.run(
        [sys.executable, str(APPS / "guarded.py"), case.module, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert TRAINING_STARTED not in out, f"training started:\n{out}"
    assert proc.returncode != 0, f"exited 0:\n{out}"
    for fragment in [case.expect] if isinstance(case.expect, str) else case.expect:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    assert "Traceback" not in proc.stderr, proc.stderr
