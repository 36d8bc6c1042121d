"""What many tests share: the repository's paths, running the commands as a user does, waiting on
a condition, writing JSONL files and loading the embedded model (imported as `helpers`: pytest puts
tests/ on sys.path through tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
APPS = TESTS / "apps"
SRC = ROOT / "src"


def command(
    *args: str,
    module: str = "sweep_sft",
    app: str | None = None,
    guarded: bool = False,
    python_flags: Iterable[str] = (),
) -> list[str]:
    """argv of `python -m MODULE ARGS`; of `python tests/apps/APP ARGS` with app; with guarded, of
    `python tests/apps/guarded.py MODULE ARGS` (the same command with training forbidden)."""
    if app is not None:
        head = [str(APPS / app)]
    elif guarded:
        head = [str(APPS / "guarded.py"), module]
    else:
        head = ["-m", module]
    return [sys.executable, *python_flags, *head, *args]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None, **how: Any
) -> subprocess.CompletedProcess[str]:
    """Run `command(*args, **how)` in cwd to its end, output captured as text; env adds variables."""
    return subprocess.run(
        command(*args, **how),
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cli(
    *args: str,
    cwd: Path,
    log: Path,
    env: dict[str, str] | None = None,
    module: str = "sweep_sft",
    app: str | None = None,
    **popen: Any,
) -> subprocess.Popen:
    """Start `command(*args)` in cwd, stdout and stderr into the file `log`; popen: Popen's options."""
    with log.open("w") as out:  # the child holds its own copy of the file
        return subprocess.Popen(
            command(*args, module=module, app=app),
            cwd=cwd,
            env={**os.environ, **(env or {})},
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            **popen,
        )


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float = 120,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.2,
) -> Any:
    """check()'s first truthy value, polled every `interval` s; fails the test after `timeout` s
    (killing proc) or once proc has exited, with the tail of `log`."""
    tail = (lambda: "\n" + log.read_text()[-3000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}{tail()}")
        time.sleep(interval)
    if proc is not None:
        proc.kill()
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{tail()}")


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `-X importtime` lines: `import time:  self |  cumulative |   name`."""
    lines = [line for line in importtime_stderr.splitlines() if line.startswith("import time:")]
    return {line.rsplit("|", 1)[1].strip() for line in lines[1:]}  # lines[0] is the header


def jsonl(rows: Iterable[dict | str]) -> str:
    """JSONL text: a dict becomes its JSON, a string is a line as given (to write broken ones)."""
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


def write_jsonl(path: Path, rows: Iterable[dict | str]) -> Path:
    """Write `jsonl(rows)` to path (UTF-8) and return path."""
    path.write_text(jsonl(rows), encoding="utf-8")
    return path


def load_embedded(path: str | Path | None = None):
    """(model, tokenizer): the embedded default's model (fp32, CPU), or the one saved at path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep_sft.embedded.build import embedded_model

    path = path or embedded_model()
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


def mlflow_runs(cwd: Path) -> list:
    """Every run of the SQLite MLflow store cwd/mlflow.db ([] when there is no store)."""
    from mlflow.tracking import MlflowClient

    if not (cwd / "mlflow.db").exists():
        return []
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def sweep_runs(cwd: Path):
    """(parent, children) of the one sweep in the SQLite MLflow store cwd/mlflow.db."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{cwd / 'mlflow.db'}")
    found = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    parents = [r for r in found if r.data.tags.get("sweep_sft.kind") == "sweep"]
    assert len(parents) == 1
    children = [r for r in found if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) == len(found) - 1
    return parents[0], children


def by_job(children) -> dict[str, list]:
    """A sweep's child runs by the name of their job's folder (the job number)."""
    out: dict[str, list] = {}
    for c in children:
        out.setdefault(Path(c.data.tags["sweep_sft.output_dir"]).name, []).append(c)
    return out


def sweep_summary(cwd: Path) -> dict:
    """The sweep_summary.json of the sweep in cwd/s."""
    return json.loads((cwd / "s" / "sweep_summary.json").read_text())


def guarded_sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """`python -m sweep_sft -m ...` with training forbidden (tests/apps/guarded.py), MLflow and the sweep in cwd."""
    args = [f"tracking.uri=sqlite:///{cwd / 'mlflow.db'}", f"hydra.sweep.dir={cwd / 's'}", *overrides]
    args += ["trainer.num_threads=1", "trainer.progress=false", "data.max_train_examples=32", "trainer.max_steps=1"]
    return run_cli("-m", *args, guarded=True, cwd=cwd)


def embedded_rows(tokenizer, data_path: Path, n: int):
    """The first n embedded training examples, tokenised as a trial does by default (all assistant
    turns, 256 tokens, prompt truncation, EOS ends a turn)."""
    from sweep_sft.data.records import load_jsonl
    from sweep_sft.data.tokenize import tokenize

    eot = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    return tokenize(load_jsonl(data_path / "train.jsonl")[:n], tokenizer, "all_assistant", 256, "prompt", eot)[0]
