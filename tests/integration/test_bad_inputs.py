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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from helpers import jsonl, run_cli, write_jsonl

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
    slow: bool = False  # loads the model before it fails (needs_trial cases are slow too)
    # Called with (the test's folder, the trained trial or None) before the command runs, for
    # inputs `files` cannot write (a damaged copy of the trained model).
    prepare: Callable[[Path, Path | None], None] | None = None


GOOD = '{"task_type": "qa/x", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'
OWN_DATA = ["data=jsonl", "data.mix.sources.files.train={tmp}/train.jsonl", "data.mix.sources.files.val=null"]

CASES: list[Case] = [
    Case("negative lr", ["lr=-1"], "optimizer.lr"),
    # -- data (records, task_types, mix): rows here --
    *(
        Case(
            f"task_type {name} MLflow refuses in a metric name",
            OWN_DATA,
            ["train.jsonl:2: task_type:", "allowed: letters, digits, '_', '-', '.', ':' and space"],
            files={"train.jsonl": jsonl([GOOD, GOOD.replace('"qa/x"', task_type)])},
        )
        for name, task_type in [
            ("<b>", '"qa/<b>"'),
            ("quote", r'"qa/\"x\""'),
            ("..", '"qa/.."'),
            ("mathtext", r'"qa/$\\x$"'),
        ]
    ),
    Case(
        "assistant turn first",
        OWN_DATA,
        "train.jsonl:1: message 0: the conversation starts with an assistant turn; expected a user turn first",
        files={
            "train.jsonl": jsonl([
                GOOD.replace('[{"role": "user"', '[{"role": "assistant", "content": "hello"}, {"role": "user"')
            ])
        },
    ),
    Case(
        "system turn not first",
        OWN_DATA,
        "train.jsonl:1: message 1: system turn after the first message",
        files={
            "train.jsonl": jsonl([
                GOOD.replace('{"role": "assistant"', '{"role": "system", "content": "s"}, {"role": "assistant"')
            ])
        },
    ),
    Case(
        "message weight other than 0 or 1",
        OWN_DATA,
        "train.jsonl:1: messages[1]: weight must be 0 (not trained) or 1 (trained), got 0.5",
        files={"train.jsonl": jsonl([GOOD.replace('"content": "yo"}', '"content": "yo", "weight": 0.5}')])},
    ),
    Case(
        "weight on a user turn",
        OWN_DATA,
        "train.jsonl:1: messages[0]: 'weight' is set on a 'user' turn; only assistant turns take a weight",
        files={"train.jsonl": jsonl([GOOD.replace('"content": "hi"}', '"content": "hi", "weight": 1}')])},
    ),
    Case(
        "every assistant turn weight 0",
        OWN_DATA,
        "train.jsonl:1: every assistant turn has weight 0; expected at least one trained turn",
        files={"train.jsonl": jsonl([GOOD.replace('"content": "yo"}', '"content": "yo", "weight": 0}')])},
    ),
    Case(
        "duplicate key in a record",
        OWN_DATA,
        "train.jsonl:2: duplicate key 'content' in one JSON object; expected each key once",
        files={"train.jsonl": jsonl([GOOD, GOOD.replace('"content": "yo"', '"content": "yo", "content": "no"')])},
    ),
    Case(
        "lone surrogate",
        OWN_DATA,
        "train.jsonl:2: messages[0].content: lone surrogate '\\ud800' at character 2; expected valid Unicode",
        files={"train.jsonl": jsonl([GOOD, GOOD.replace('"hi"', '"hi\\ud800"')])},
    ),
    Case(
        "non-UTF-8 bytes",
        OWN_DATA,
        "train.jsonl:3: not valid UTF-8 (byte e9 at byte 68 of the line",
        files={"train.jsonl": jsonl([GOOD, "", GOOD.replace("hi", "caf\xe9")]).encode("latin-1")},
    ),
    Case(
        "a family's share and a task_type's share inside it",
        ["data.mix.task_ratio.reasoning=0.3", "data.mix.task_ratio.reasoning.addition=0.2"],
        "data.mix.task_ratio.reasoning=0.3 and data.mix.task_ratio.reasoning.addition=0.2: data.mix.task_ratio."
        "reasoning cannot be a number and hold addition too",
    ),
    # -- end of data --

    # -- config and model: rows here --
    Case("model path missing", ["model=local", "model.name_or_path={tmp}/no_such_model"],
         ["model.name_or_path", "no such folder", "config.json"]),
    Case("model path is a file", ["model=local", "model.name_or_path={tmp}/model.bin"],
         ["model.name_or_path", "is a file", "config.json"], files={"model.bin": b"x"}),
    Case("model folder without tokenizer", ["model=local", "model.name_or_path={tmp}/m"],
         ["model.name_or_path", "lacks tokenizer files", "tokenizer.json"],
         files={"m/config.json": "{}", "m/model.safetensors": b"x"}),
    Case("model folder without config.json", ["model=local", "model.name_or_path={tmp}/m"],
         ["model.name_or_path", "lacks config.json"], files={"m/tokenizer.json": "{}", "m/model.safetensors": b"x"}),
    Case("chat template syntax error", ["model.chat_template_path={tmp}/chat.jinja"],
         ["chat.jinja:2", "model.chat_template_path", "unexpected '}'"],
         files={"chat.jinja": "{% for m in messages %}\n{{ m.content }\n{% endfor %}\n"}),
    Case("chat template unclosed block", ["model.chat_template_path={tmp}/chat.jinja"],
         ["chat.jinja:3", "endfor"],
         files={"chat.jinja": "{% for m in messages %}\n{% if m.role == 'user' %}{{ m.content }}\n{% endfor %}\n"}),
    Case("chat template not UTF-8", ["model.chat_template_path={tmp}/chat.jinja"],
         ["model.chat_template_path", "UTF-8"], files={"chat.jinja": b"{{ '\xff' }}"}),
    Case("lr nan", ["lr=nan"], ["optimizer.lr", "finite number >= 0", "nan"]),
    Case("lr inf", ["lr=inf"], ["optimizer.lr", "finite number >= 0", "inf"]),
    Case("weight decay nan", ["optimizer.weight_decay=nan"], ["optimizer.weight_decay", "finite number >= 0"]),
    Case("negative adam eps", ["optimizer.eps=-1e-8"], ["optimizer.eps", "finite number > 0"]),
    Case("grad clip nan", ["trainer.grad_clip=nan"], ["trainer.grad_clip", "finite number >= 0"]),
    Case("temperature inf", ["eval.temperature=inf"], ["eval.temperature", "finite number > 0"]),
    Case("tolerance nan", ["eval.em_tolerance=nan"], ["eval.em_tolerance", "finite number >= 0"]),
    Case("outage timeout nan", ["tracking.outage_timeout_s=nan"], ["tracking.outage_timeout_s", "finite number"]),
    Case("near-dedup threshold above 1", ["data.dedup.near_threshold=2"], ["data.dedup.near_threshold", "in [0, 1]"]),
    Case("source weight inf", ["data.mix.sources.embedded.weight=inf"], ["data.mix.sources.embedded.weight", "finite"]),
    Case("negative num_threads", ["trainer.num_threads=-1"], ["trainer.num_threads", ">= 1"]),
    Case("unknown attention kernel", ["model.attn_implementation=bogus"], ["model.attn_implementation=bogus", "sdpa"],
         slow=True),
    Case("empty experiment name", ["tracking.enabled=true", "tracking.uri=sqlite:///{tmp}/mlflow.db",
                                   "tracking.experiment=''"], ["tracking.experiment", "empty"]),
    Case("empty pad token", ["model.pad_token=''"], ["model.pad_token", "empty string"]),
    Case("empty special token", ["model.add_special_tokens=['<|a|>','']"], ["model.add_special_tokens", "non-empty"]),
    Case("output_dir is a file", ["output_dir={tmp}/taken"], ["output_dir=", "is a file", "expected a folder"],
         files={"taken": "x"}),
    Case("output_dir inside a file", ["output_dir={tmp}/taken/trial"], ["output_dir=", "cannot create the folder"],
         files={"taken": "x"}),
    Case("deepspeed universal checkpoint", ["deepspeed=zero2", "+deepspeed.extra.checkpoint.load_universal=true"],
         ["deepspeed.extra.checkpoint.load_universal", "weights_only=False"]),
    # (`{{`, `}}`: the arguments are str.format templates.)
    Case("unknown scorer", ["eval.scorers={{summ*: chfr}}"],
         ["eval.scorers.summ*: unknown scorer 'chfr'", "exact, normalized, contains", "module:function"]),
    Case("scorer regex that does not compile", ['eval.scorers={{mcq/*: "regex:(A|B"}}'],
         ["eval.scorers.mcq/*=regex:(A|B: not a valid regular expression"]),
    Case("scorer function that does not import", ["eval.scorers={{reasoning/*: no_such_module_xyz:score}}"],
         ["eval.scorers.reasoning/*=no_such_module_xyz:score: cannot import no_such_module_xyz"]),
    Case("json_equal on references that are no JSON", ["eval.scorers={{classification/*: json_equal}}"],
         ["eval.scorers.classification/*=json_equal", "validation.jsonl:", "is not JSON: 'positive'"]),
    # -- end of config and model --

    # -- evaluate: rows here --
    Case("evaluate: unknown override key", ["{trial}", "eval.nonsense=3"], ["override eval.nonsense: unknown key",
         "EvalConfig"], module="sweep_sft.evaluate", needs_trial=True),
    Case("evaluate: unknown top-level key", ["{trial}", "nonsense=3"], "override nonsense: unknown key",
         module="sweep_sft.evaluate", needs_trial=True),
    Case("evaluate: override of the wrong type", ["{trial}", "eval.pass_k=many"],
         ["override eval.pass_k", "could not be converted to Integer"], module="sweep_sft.evaluate", needs_trial=True),
    Case("evaluate: truncated safetensors", ["{tmp}/trial"],
         ["trial/model/model.safetensors: not a complete safetensors file", "truncated"],
         module="sweep_sft.evaluate", needs_trial=True, prepare=lambda tmp, trial: _truncated_copy(trial, tmp)),

    # -- end of evaluate --

    # -- sweeps: rows here --
    # A key the chosen sweeper lacks: refused before the sweep opens its parent run (test_mlflow.py
    # checks the store stays empty), naming the key and the keys that sweeper has.
    Case(
        "unknown grid sweeper key",
        ["hydra.mode=MULTIRUN", "+hydra.sweeper.bogus=1", "lr=1e-3,1e-2"],
        [
            "hydra.sweeper.bogus",
            "hydra/sweeper=grid",
            "max_batch_size, max_in_flight, dispatch, resume, params, max_failure_rate",
        ],
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

    Case("bad value in one sweep combination", ["hydra.mode=MULTIRUN", "lr=1e-3,-1"],
         ["sweep job #1 of 2 (lr=-1)", "optimizer.lr must be >= 0", "no job was launched"]),
    Case("nan in one cell of a grid",
         ["hydra.mode=MULTIRUN", "lr=1e-4,1e-3", "epochs=1,2", "optimizer.weight_decay=0,nan"],
         ["sweep job #1 of 8 (lr=0.0001 epochs=1 optimizer.weight_decay=nan)", "optimizer.weight_decay"]),
    Case("missing model in one sweep combination",
         ["hydra.mode=MULTIRUN", "model=local", "model.name_or_path=embedded,{tmp}/nope"],
         ["/nope: no such folder", "sweep job #1 of 2"]),
    Case("sandwich side with a negative lr",
         ["hydra.mode=MULTIRUN", "hydra/sweeper=sandwich", "hydra.sweeper.scale=linear", "hydra.sweeper.passing=0",
          "hydra.sweeper.failing=-0.01"],
         ["hydra.sweeper.failing=-0.01 (lr=-0.01)", "optimizer.lr must be >= 0", "no job was launched"]),
    Case("sandwich side with an infinite lr", ["hydra.mode=MULTIRUN", "sweep=sandwich_lr", "hydra.sweeper.failing=inf"],
         ["hydra.sweeper.failing=inf", "optimizer.lr must be a finite number"]),
    Case("sandwich given a sweep of its own parameter", ["hydra.mode=MULTIRUN", "sweep=sandwich_lr", "lr=1e-4,1e-3"],
         ["searches lr itself", "lr=1e-4,1e-3"]),
    Case("optuna range with a negative lr", ["hydra.mode=MULTIRUN", "hydra/sweeper=optuna5", "lr=interval(-0.01,0.01)"],
         ["the search space of lr (lr=-0.01)", "optimizer.lr must be >= 0", "no job was launched"]),
    Case("optuna choice with nan", ["hydra.mode=MULTIRUN", "hydra/sweeper=optuna5", "lr=choice(1e-3,nan)"],
         ["the search space of lr (lr=nan)", "optimizer.lr must be a finite number"]),
    Case("optuna preset with a bad fixed value", ["hydra.mode=MULTIRUN", "sweep=optuna_tpe", "trainer.grad_clip=nan"],
         ["the fixed overrides", "trainer.grad_clip must be a finite number >= 0"]),
    Case("a family's share and a task_type's share inside it, swept",
         ["hydra.mode=MULTIRUN", "data.mix.task_ratio.reasoning=0.3", "data.mix.task_ratio.reasoning.addition=0.2,0.1"],
         ["sweep job #0 of 2 (data.mix.task_ratio.reasoning.addition=0.2)", "cannot be a number and hold addition",
          "no job was launched"]),
    Case("bad value in a sweep with ${hydra:...} in output_dir",
         ["hydra.mode=MULTIRUN", "lr=1e-3,-1", "output_dir={tmp}/runs/${{hydra:job.num}}_${{hydra:job.id}}"],
         ["sweep job #1 of 2 (lr=-1)", "optimizer.lr must be >= 0", "no job was launched"]),
    # -- end of sweeps --
]


def _truncated_copy(trial: Path, tmp: Path) -> None:
    """<tmp>/trial: the trained trial with the first half of its model.safetensors only."""
    import shutil

    shutil.copytree(trial, tmp / "trial")
    weights = tmp / "trial" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


@pytest.fixture(scope="module")
def trained_trial(tmp_path_factory) -> Path:
    """A tiny trained trial with its saved model, for the cases given to `sweep_sft.evaluate`."""
    out = tmp_path_factory.mktemp("trained") / "trial"
    proc = run_cli(*TINY, "trainer.max_steps=2", "trainer.eval_every=0", "eval.max_new_tokens=4",
                   "eval.train_recall_examples=2", f"output_dir={out}", cwd=out.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


def _fill(arg: str, tmp: Path, trial: Path | None) -> str:
    from sweep_sft.embedded.build import embedded_data

    return arg.format(tmp=tmp, data=embedded_data(), trial=trial or "")


def _param(case: Case):
    """A case as a test; those that train a trial or load the model first are slow."""
    return pytest.param(case, id=case.id, marks=[pytest.mark.slow] if case.needs_trial or case.slow else [])


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_fails_clearly_before_training(case: Case, tmp_path: Path, request) -> None:
    trial = request.getfixturevalue("trained_trial") if case.needs_trial else None
    for name, content in case.files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        content = _fill(content, tmp_path, trial) if isinstance(content, str) and "{tmp}" in content else content
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    if case.prepare is not None:
        case.prepare(tmp_path, trial)
    args = [_fill(a, tmp_path, trial) for a in case.args]
    if case.module == "sweep_sft" and case.tiny:
        args = [*TINY, f"hydra.run.dir={tmp_path / 'run'}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
    env = {"SWEEP_SFT_CACHE": os.environ.get("SWEEP_SFT_CACHE", str(Path.home() / ".cache/sweep_sft"))}
    proc = run_cli(*args, module=case.module, guarded=True, cwd=tmp_path, env=env, timeout=300)
    out = proc.stdout + proc.stderr
    assert TRAINING_STARTED not in out, f"training started:\n{out}"
    assert proc.returncode != 0, f"exited 0:\n{out}"
    for fragment in [case.expect] if isinstance(case.expect, str) else case.expect:
        assert fragment in out, f"{fragment!r} not in:\n{out}"
    assert "Traceback" not in proc.stderr, proc.stderr


def test_cli_bad_data_exits_non_zero_naming_file_and_line(tmp_path):
    record = {
        "task_type": "qa/simple",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
    }
    train = write_jsonl(tmp_path / "train.jsonl", [record, record, "[1, 2]"])
    val = write_jsonl(tmp_path / "val.jsonl", [record])
    data = ["data=jsonl", f"data.mix.sources.files.train={train}", f"data.mix.sources.files.val={val}"]
    proc = run_cli(*data, "tracking.enabled=false", cwd=tmp_path)
    assert proc.returncode != 0
    assert f"error: {tmp_path / 'train.jsonl'}:3:" in proc.stderr
