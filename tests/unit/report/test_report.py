"""The sweep report on a hand-built sweep folder (a complete, a pruned and a failed trial, a
diagnostic finding) and on MLflow parent runs, with and without their sweep folder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sweep_sft.report.__main__ import main
from sweep_sft.report.data import ReportInputError
from sweep_sft.report.from_mlflow import load_parent_run
from sweep_sft.report.html import SECTIONS, write_report
from sweep_sft.report.load import load

TASKS = ("classification/sentiment", "format/json")
EVIL = "<script>alert('x')</script>"


def _series(start: float, end: float, steps=(0, 2, 4)) -> list[list[float]]:
    n = len(steps) - 1
    return [[s, start + (end - start) * i / n] for i, s in enumerate(steps)]


def _record(lr: float, state: str = "COMPLETE", diagnostics=()) -> dict:
    series = {"train/loss": _series(9.0, 3.0 / lr**0.1, (1, 2, 3, 4)), "val/loss": _series(10.0, 4.0)}
    for i, task in enumerate(TASKS):
        series[f"val/loss/{task}"] = _series(10.0, 3.0 + i)
        series[f"train/loss/{task}"] = _series(9.0, 3.0 + i, (1, 2, 3, 4))
        series[f"task/exact_match/{task}"] = [[4, 0.25 * (i + 1)]]
        series[f"task/pass@1/{task}"] = [[4, 0.5]]
        series[f"data/examples/{task}"] = [[0, 64]]
    series["general_drop"] = [[4, lr * 10]]
    metrics = {k: v[-1][1] for k, v in series.items()}
    return {
        "objective": "val/loss",
        "value": metrics["val/loss"],
        "metrics": metrics,
        "series": series,
        "state": state,
        "steps": 4 if state == "COMPLETE" else 2,
        "diagnostics": list(diagnostics),
    }


def _job(sweep: Path, number: int, overrides: list[str], record: dict | None) -> None:
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if record is not None:
        (job / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def sweep_dir(tmp_path) -> Path:
    """A grid sweep over lr: #0 complete, #1 pruned, #2 failed (no metrics.json), #3 complete
    with a loss-spike finding whose evidence holds markup."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    finding = {"sign": "loss_spike", "step": 3, "evidence": f"loss 9 > 3x median {EVIL}", "severity": "warning"}
    _job(sweep, 0, ["lr=0.0001", "epochs=1"], _record(1e-4))
    _job(sweep, 1, ["lr=0.001", "epochs=1"], _record(1e-3, "PRUNED"))
    _job(sweep, 2, ["lr=0.01", "epochs=1"], None)
    _job(sweep, 3, ["lr=0.003", "epochs=1"], _record(3e-3, diagnostics=[finding]))
    error = f"RuntimeError: CUDA out of memory {EVIL}\nTraceback line two"
    jobs = [
        {"number": 0, "overrides": ["lr=0.0001", "epochs=1"], "state": "COMPLETE", "value": 4.0, "error": None},
        {"number": 1, "overrides": ["lr=0.001", "epochs=1"], "state": "PRUNED", "value": 4.0, "error": None},
        {"number": 2, "overrides": ["lr=0.01", "epochs=1"], "state": "FAILED", "value": None, "error": error},
        {"number": 3, "overrides": ["lr=0.003", "epochs=1"], "state": "COMPLETE", "value": 4.0, "error": None},
    ]
    summary = {"n_jobs": 4, "launched": 4, "states": {"COMPLETE": 2, "PRUNED": 1, "FAILED": 1}, "jobs": jobs}
    (sweep / "sweep_summary.json").write_text(json.dumps(summary))
    (sweep / "mlflow_parent_run.json").write_text(json.dumps({"run_id": "0" * 32, "tracking_uri": "x", "swept": []}))
    return sweep


def _section(html: str, key: str) -> str:
    match = re.search(rf'<section id="{key}">(.*?)</section>', html, re.S)
    assert match, f"no section {key}"
    return match.group(1)


def test_every_section_present_with_its_plots(sweep_dir):
    path = write_report(sweep_dir)
    assert path == sweep_dir / "report.html"
    html = path.read_text()
    for key, title in SECTIONS:
        if key != "sandwich":
            assert f"<h2>{title}</h2>" in _section(html, key)
    assert 'id="sandwich"' not in html  # no sandwich_result.json: no sandwich section
    for key, n in {"loss": 2, "channels": 1, "objective": 1, "forgetting": 1}.items():
        assert _section(html, key).count("<img ") == n, key
    assert all(src.startswith("data:image/png;base64,iVBOR") for src in re.findall(r'src="([^"]+)"', html))
    assert not re.search(r"https?://", html)  # nothing to fetch: opens offline
    summary = _section(html, "summary")
    assert "2 complete, 1 pruned, 1 failed" in summary and "lr" in summary
    assert "#0 lr=0.0001: val/loss = 4" in summary  # best: minimized val/loss, ties to the first
    assert "<th>general_drop</th>" in summary and "<td class=num>0.03</td>" in summary  # trial #3's line


def _png_width(src: str) -> int:
    import base64

    png = base64.b64decode(src.removeprefix("data:image/png;base64,"))
    return int.from_bytes(png[16:20], "big")  # the IHDR chunk's width


def test_numbers_at_three_significant_figures_and_plots_as_wide_as_the_page(tmp_path):
    sweep = tmp_path / "sweep"
    record = _record(1e-4)
    record["value"] = record["metrics"]["val/loss"] = 0.06836
    record["metrics"].update({"general_drop": -0.01637, "general/score": 0.007726, "steps_run": 600.0})
    _job(sweep, 0, ["lr=0.00012345"], record)
    _job(sweep, 1, ["lr=0.1"], _record(0.1))
    html = write_report(sweep).read_text()
    cells = re.findall(r"<td class=num>([^<]*)</td>", html)
    assert {"0.0684", "-0.0164", "0.00773"} <= set(cells), cells
    digits = [re.sub(r"^[-0.]+|e.*$|\.", "", c) for c in cells if "." in c]
    assert all(len(d) <= 3 for d in digits), cells
    assert "#0 lr=0.000123" in html and "<td>0.000123</td>" in html  # swept values too
    assert re.search(r"img \{ width: 100%; height: auto;", html)  # shown at the page width
    widths = [_png_width(src) for src in re.findall(r'src="([^"]+)"', html)]
    assert len(widths) == 5 and all(w >= 1150 for w in widths), widths  # drawn at it: 1200 px


def test_failed_and_pruned_trials_are_listed_with_the_first_line_of_the_error(sweep_dir):
    html = write_report(sweep_dir).read_text()
    rows = re.findall(r"<tr>(.*?)</tr>", _section(html, "failed"))[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [(c[0], c[2]) for c in cells] == [("1", "PRUNED"), ("2", "FAILED")]
    assert cells[1][4].startswith("RuntimeError: CUDA out of memory") and "line two" not in cells[1][4]
    assert cells[0][3] == "2"  # the step a pruned trial stopped at


def test_text_is_escaped(sweep_dir):
    html = write_report(sweep_dir).read_text()
    assert EVIL not in html
    assert html.count("&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;") == 2  # the error and the finding
    diag = _section(html, "diagnostics")
    assert "loss_spike" in diag and "<td class=num>3</td>" in diag


def test_per_task_tables_cover_every_metric_family_but_the_mix(sweep_dir):
    html = _section(write_report(sweep_dir).read_text(), "tasks")
    families = re.findall(r"<h3>(.*?)</h3>", html)
    assert families == ["task/exact_match", "task/pass@1", "train/loss", "val/loss"]
    assert "data/examples" not in html and all(task.replace("/", "/<wbr>") in html for task in TASKS)


def test_a_task_type_that_ends_another_is_no_family_of_its_own(sweep_dir):
    """task_types format/json and json: val/loss/format/json is format/json's val/loss, not the
    json column of a family val/loss/format."""
    record = json.loads((sweep_dir / "0" / "metrics.json").read_text())
    record["metrics"].update({"val/loss/json": 2.5, "task/exact_match/json": 1.0})
    (sweep_dir / "0" / "metrics.json").write_text(json.dumps(record))
    html = _section(write_report(sweep_dir).read_text(), "tasks")
    assert re.findall(r"<h3>(.*?)</h3>", html) == ["task/exact_match", "task/pass@1", "train/loss", "val/loss"]
    val_loss = html.split("<h3>val/loss</h3>")[1]
    assert re.findall(r"<th>(.*?)</th>", val_loss) == [
        "trial",
        "classification/<wbr>sentiment",
        "format/<wbr>json",
        "json",
    ]


def test_sandwich_section_only_with_its_result(sweep_dir):
    result = {
        "param": "lr",
        "constraint": {"metric": "general_drop", "op": "<=", "threshold": 0.02, "rule": "all"},
        "bracket": {"passing": 0.001, "failing": 0.003},
        "probes": [
            {"value": 0.0001, "round": 1, "passed": True, "results": [{"general_drop": 0.001}]},
            {"value": 0.003, "round": 1, "passed": False, "results": [{"general_drop": 0.03}]},
            {"value": 0.001, "round": 2, "passed": True, "results": [None]},
        ],
    }
    (sweep_dir / "sandwich_result.json").write_text(json.dumps(result))
    html = write_report(sweep_dir).read_text()
    assert _section(html, "sandwich").count("<img ") == 1
    assert load(str(sweep_dir)).sweeper == "sandwich"


def test_missing_data_gives_a_note_not_an_error(tmp_path):
    """One failed trial and nothing else: every plot is a one-line note."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    _job(sweep, 0, ["lr=0.1"], None)
    html = write_report(sweep).read_text()
    assert "<img " not in html
    assert "no trial logged train/loss" in _section(html, "loss")
    assert "no trial logged per-task_type" in _section(html, "channels")
    assert "no complete trial" in _section(html, "objective")
    assert "general_drop" in _section(html, "forgetting")
    assert "no loss-curve diagnostic" in _section(html, "diagnostics")
    assert "no metrics.json in its job folder" in _section(html, "failed")  # nothing recorded why


def test_bad_input_is_named_and_exits_2(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    assert main([str(tmp_path / "plain")]) == 2
    assert f"{tmp_path / 'plain'} is not a sweep folder" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2
    assert "neither a folder nor an MLflow run id" in capsys.readouterr().err
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["f" * 32, "--tracking-uri", uri]) == 2
    assert f"run {'f' * 32} not found in --tracking-uri {uri}" in capsys.readouterr().err


def test_cli_writes_where_asked_and_prints_the_path(sweep_dir, tmp_path, capsys):
    out = tmp_path / "elsewhere" / "r.html"
    assert main([str(sweep_dir), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert out.exists() and not (sweep_dir / "report.html").exists()


def _parent(client, tags: dict[str, str]) -> tuple[str, str]:
    experiment = client.create_experiment("sweep-sft")
    parent = client.create_run(experiment, tags={"sweep_sft.kind": "sweep", **tags})
    return experiment, parent.info.run_id


def test_parent_run_with_its_sweep_folder_reads_the_folder(sweep_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    _, run_id = _parent(client, {"sweep_sft.sweep_dir": str(sweep_dir)})
    sweep = load_parent_run(run_id, uri)
    assert sweep.sweep_dir == sweep_dir.resolve() and sweep.parent_run_id == run_id
    assert [(t.number, t.state) for t in sweep.trials] == [
        (0, "COMPLETE"),
        (1, "PRUNED"),
        (2, "FAILED"),
        (3, "COMPLETE"),
    ]
    client.create_run(client.get_run(run_id).info.experiment_id, tags={"sweep_sft.kind": "trial"})
    other = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.`sweep_sft.kind` = 'trial'")[0]
    with pytest.raises(ReportInputError, match="not a sweep's parent run"):
        load_parent_run(other.info.run_id, uri)


def _child(client, experiment: str, parent_id: str, name: str, lr: float | None, state: str, start=None) -> None:
    """A trial's child run as the trial logs it: tags, metric histories, objective.json."""
    from mlflow.entities import Metric

    tags = {"mlflow.parentRunId": parent_id, "mlflow.runName": name}
    if state == "FAILED":
        tags["sweep_sft.error"] = "ConfigError: boom"
    else:
        tags["sweep_sft.trial_state"] = state
        tags["diagnostics.loss_spike"] = "step 3: loss 9 > 3x median"
    child = client.create_run(experiment, start_time=start, tags=tags).info.run_id
    if lr is not None:
        record = _record(lr, state)
        metrics = [Metric(k, v, 0, int(s)) for k, pts in record["series"].items() if "@" not in k for s, v in pts]
        client.log_batch(child, metrics=metrics)
        client.log_dict(child, {k: record[k] for k in ("objective", "value", "state", "steps")}, "objective.json")
    client.set_terminated(child, "FAILED" if state == "FAILED" else "FINISHED")


def test_parent_run_without_its_folder_is_rebuilt_from_the_child_runs(tmp_path):
    """The sweep folder is gone: trials come from the child runs' names, tags, metric
    histories and objective.json artifacts, the sandwich result from the parent's artifact."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tags = {"sweep_sft.sweep_dir": str(tmp_path / "gone"), "sweep_sft.overrides": "lr=1e-4,1e-3 epochs=1"}
    experiment, run_id = _parent(client, tags)
    client.log_dict(
        run_id, {"param": "lr", "bracket": {"passing": 1e-4, "failing": 1e-3}, "probes": []}, "sandwich_result.json"
    )
    children = [("0: lr=0.0001", 1e-4, "COMPLETE"), ("1: lr=0.001", 1e-3, "PRUNED"), ("2: lr=0.01", None, "FAILED")]
    for name, lr, state in children:
        _child(client, experiment, run_id, name, lr, state)

    sweep = load_parent_run(run_id, uri)
    assert sweep.sweep_dir is None and sweep.sweeper == "sandwich" and sweep.swept == ["lr"]
    assert [(t.number, t.state, t.params) for t in sweep.trials] == [
        (0, "COMPLETE", {"lr": 0.0001}),
        (1, "PRUNED", {"lr": 0.001}),
        (2, "FAILED", {"lr": 0.01}),
    ]
    first = sweep.trials[0]
    assert first.series["train/loss"] == [(s, v) for s, v in _record(1e-4)["series"]["train/loss"]]
    assert first.objective == "val/loss" and first.value == pytest.approx(4.0) and first.steps == 4
    assert first.diagnostics == [{"sign": "loss_spike", "step": 3, "evidence": "loss 9 > 3x median", "severity": ""}]
    assert sweep.trials[2].error == "ConfigError: boom"
    out = write_report(run_id, tmp_path / "r.html", uri)
    html = out.read_text()
    assert "rebuilt from the MLflow child runs" in html and 'id="sandwich"' in html
    assert _section(html, "loss").count("<img ") == 2


def test_rebuilt_report_keeps_the_failed_jobs_that_opened_no_child_run(tmp_path):
    """The reviewer's sweep `lr=1e-3,-1 eval.generate=true,false`: two trials ran (child runs),
    two failed their config check before opening one; only the parent's sweep_summary.json
    knows them. Rebuilt from MLflow, the report counts and lists them as the folder's does."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    tags = {"sweep_sft.sweep_dir": str(tmp_path / "gone"), "sweep_sft.overrides": "lr=1e-3,-1 eval.generate=true,false"}
    experiment, run_id = _parent(client, tags)
    # Job 0 was requeued and its resumed attempt could not reopen the run: the later run counts.
    _child(client, experiment, run_id, "0: lr=0.001,eval.generate=true", 1e-3, "REQUEUED", start=1000)
    _child(client, experiment, run_id, "0: lr=0.001,eval.generate=true", 1e-3, "COMPLETE", start=2000)
    _child(client, experiment, run_id, "1: lr=0.001,eval.generate=false", 1e-3, "COMPLETE")
    error = "ConfigError: optimizer.lr must be >= 0, got -1.0\nTraceback line two"
    jobs = [
        {"number": 0, "overrides": ["lr=1e-3", "eval.generate=true"], "state": "COMPLETE", "value": 4.0, "error": None},
        {
            "number": 1,
            "overrides": ["lr=1e-3", "eval.generate=false"],
            "state": "COMPLETE",
            "value": 4.0,
            "error": None,
        },
        {"number": 2, "overrides": ["lr=-1", "eval.generate=true"], "state": "FAILED", "value": None, "error": error},
        {"number": 3, "overrides": ["lr=-1", "eval.generate=false"], "state": "FAILED", "value": None, "error": error},
    ]
    client.log_dict(run_id, {"n_jobs": 4, "launched": 4, "jobs": jobs}, "sweep_summary.json")

    sweep = load_parent_run(run_id, uri)
    assert [(t.number, t.state) for t in sweep.trials] == [
        (0, "COMPLETE"),
        (1, "COMPLETE"),
        (2, "FAILED"),
        (3, "FAILED"),
    ]
    assert sweep.swept == ["eval.generate", "lr"] and sweep.trials[3].params == {"eval.generate": "false", "lr": -1}
    html = write_report(run_id, tmp_path / "r.html", uri).read_text()
    assert "4: 2 complete, 0 pruned, 2 failed" in _section(html, "summary")
    rows = re.findall(r"<tr>(.*?)</tr>", _section(html, "failed"))[1:]
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r) for r in rows]
    assert [(c[0], c[1], c[2]) for c in cells] == [
        ("2", "lr=-1 eval.generate=true", "FAILED"),
        ("3", "lr=-1 eval.generate=false", "FAILED"),
    ]
    assert all(c[4] == "ConfigError: optimizer.lr must be &gt;= 0, got -1.0" for c in cells)


def test_callback_writes_the_report_with_tracking_off(sweep_dir):
    from omegaconf import OmegaConf

    from sweep_sft.sweep.callback import MlflowParentRun

    config = OmegaConf.create(
        {"tracking": {"enabled": False}, "hydra": {"sweep": {"dir": str(sweep_dir)}, "overrides": {"task": []}}}
    )
    callback = MlflowParentRun()
    callback.on_multirun_start(config)
    callback.on_multirun_end(config)
    assert "Failed and pruned trials" in (sweep_dir / "report.html").read_text()


def test_a_report_that_fails_costs_a_warning_not_the_sweep(tmp_path, caplog):
    from sweep_sft.sweep.callback import write_report as callback_report

    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text("{not json")
    assert callback_report(tmp_path) is None
    assert "could not write" in caplog.text and "metrics.json: not valid JSON" in caplog.text


def test_optuna_result_gives_direction_and_errors(sweep_dir):
    """optuna_result.json: its direction picks the best trial (not the name's guess), a FAIL
    trial's error fills the failed table."""
    (sweep_dir / "sweep_summary.json").unlink()
    trials = [
        {"number": 0, "state": "COMPLETE", "params": {"lr": 0.0001}, "values": [4.0]},
        {"number": 2, "state": "FAIL", "params": {"lr": 0.01}, "values": None, "error": "ValueError: nan loss"},
    ]
    result = {"directions": ["maximize"], "states": {"COMPLETE": 1, "FAIL": 1}, "trials": trials}
    (sweep_dir / "optuna_result.json").write_text(json.dumps(result))
    (sweep_dir / "3" / "metrics.json").write_text(json.dumps({**_record(3e-3), "value": 5.0}))
    sweep = load(str(sweep_dir))
    assert sweep.sweeper == "optuna5" and sweep.direction == "maximize" and sweep.direction_known
    assert sweep.best().number == 3
    html = write_report(sweep_dir).read_text()
    assert "ValueError: nan loss" in _section(html, "failed")
    assert "val/loss, maximize<" in _section(html, "summary")


def _learn_vs_forget_axes(sweep_dir, monkeypatch, title: list[str] | None = None) -> tuple[str, dict[str, float]]:
    """The learn-vs-forget plot's x label and each trial's x (by its `#n` label), read off the
    figure before it becomes a PNG; its title appended to `title`."""
    from sweep_sft.report import plots as report_plots

    seen = []
    monkeypatch.setattr(report_plots, "_png", lambda fig: seen.append(fig) or b"png")
    assert report_plots.learn_vs_forget(load(str(sweep_dir))) == b"png"
    ax = seen[0].axes[0]
    if title is not None:
        title.append(ax.get_title())
    return ax.get_xlabel(), {a.get_text(): a.xy[0] for a in ax.texts}


def test_learn_vs_forget_puts_every_trial_on_one_gain_measure(sweep_dir, monkeypatch):
    """Trial #3 lacks exact match: every trial is placed by its val/loss reduction (10 -> 4),
    not #0 and #1 at their exact match (0-1) and #3 at its loss reduction (6)."""
    label, xs = _learn_vs_forget_axes(sweep_dir, monkeypatch)
    assert label.startswith("task/exact_match") and xs == pytest.approx({"#0": 0.375, "#1": 0.375, "#3": 0.375})
    record = json.loads((sweep_dir / "3" / "metrics.json").read_text())
    record["metrics"] = {k: v for k, v in record["metrics"].items() if not k.startswith("task/exact_match")}
    (sweep_dir / "3" / "metrics.json").write_text(json.dumps(record))
    label, xs = _learn_vs_forget_axes(sweep_dir, monkeypatch)
    assert label.startswith("val/loss reduction") and "exact_match" not in label
    assert xs == pytest.approx({"#0": 6.0, "#1": 6.0, "#3": 6.0})
    # A trial with exact match but no val/loss series cannot be placed: named, not mixed in.
    record = json.loads((sweep_dir / "1" / "metrics.json").read_text())
    del record["series"]["val/loss"]
    (sweep_dir / "1" / "metrics.json").write_text(json.dumps(record))
    title = []
    label, xs = _learn_vs_forget_axes(sweep_dir, monkeypatch, title)
    assert label.startswith("val/loss reduction") and set(xs) == {"#0", "#3"}
    assert "left out (no val/loss reduction from the first evaluation): #1" in title[0]


def test_labels_are_never_read_as_mathtext(tmp_path):
    """A task_type, a swept value and a trial label with `$` and a backslash (bad mathtext:
    matplotlib would fail the whole report) are drawn as plain text."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    task = "qa/$\\bad{$"
    for number, value in enumerate(["$\\x$", "a$b\\c$"]):
        record = _record(1e-3)
        record["series"][f"val/loss/{task}"] = _series(10.0, 3.0)
        record["metrics"][f"val/loss/{task}"] = 3.0
        _job(sweep, number, [f"data.mix.only={value}", f"tracking.run_name=$\\run{number}$"], record)
    html = write_report(sweep).read_text()
    for key, n in {"loss": 2, "channels": 1, "objective": 1}.items():
        assert _section(html, key).count("<img ") == n, key


def _generations(task_scorers: dict[str, str], n: int, tag: str) -> list[dict]:
    """n validation records per task_type (and a train-recall one), as a trial writes them."""
    rows = []
    for task, scorer in task_scorers.items():
        for i in range(n):
            prompt = [{"role": "system", "content": "sys"}, {"role": "user", "content": f"{tag} prompt {i} {EVIL}"}]
            rows.append(
                {"split": "validation", "task_type": task, "prompt": prompt, "reference": f"ref {i} & <b>",
                 "generated": f"{tag} answer {i}", "score": 0.5, "scorer": scorer}
            )
        rows.append({"split": "train", "task_type": task, "prompt": [], "reference": "r", "generated": "TRAINED",
                     "score": 1.0, "scorer": scorer})
    return rows


def test_generations_show_a_few_per_task_type_best_trial_first_escaped(sweep_dir):
    scorers = {"format/json": "json_valid", "classification/sentiment": "exact"}  # the file's order
    for number, tag in ((0, "zeroth"), (3, "third")):
        text = "".join(json.dumps(r) + "\n" for r in _generations(scorers, 5, tag))
        (sweep_dir / str(number) / "generations.jsonl").write_text(text + '{"cut off', encoding="utf-8")
    sweep = load(str(sweep_dir))
    assert [len(t.generations) for t in sweep.trials] == [6, 0, 0, 6]  # 3 per task_type, validation only
    html = write_report(sweep_dir).read_text()
    section = _section(html, "generations")
    best, _, others = section.partition("<details>")
    assert "#0 lr=0.0001 (best trial)" in best and "zeroth answer 2" in best and "zeroth answer 3" not in best
    assert "third answer 0" in others and "TRAINED" not in section
    assert EVIL not in html and "(+1 earlier turn) zeroth prompt 0 &lt;script&gt;" in best
    assert "ref 0 &amp; &lt;b&gt;" in best
    named = "classification/sentiment: exact, format/json: json_valid"
    assert f"task/exact_match is the mean score under each task_type's scorer ({named})" in best
    assert "<td>json_valid</td>" in best and "<td class=num>0.5</td>" in best
    rows = re.findall(r"<tr><td>([^<]+)</td>", best)
    assert rows == ["classification/sentiment"] * 3 + ["format/json"] * 3  # by task_type


def test_no_generations_is_a_note(sweep_dir):
    assert "no trial recorded its generations" in _section(write_report(sweep_dir).read_text(), "generations")


def test_a_rebuilt_report_reads_the_generations_artifact(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment, run_id = _parent(client, {"sweep_sft.sweep_dir": str(tmp_path / "gone")})
    _child(client, experiment, run_id, "0: lr=0.0001", 1e-4, "COMPLETE")
    child = client.search_runs([experiment], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")[0]
    text = "".join(json.dumps(r) + "\n" for r in _generations({"format/json": "chrf"}, 4, "logged"))
    client.log_text(child.info.run_id, text, "generations.jsonl")
    sweep = load_parent_run(run_id, uri)
    assert [g["generated"] for g in sweep.trials[0].generations] == [f"logged answer {i}" for i in range(3)]
    assert "logged answer 2" in _section(write_report(run_id, tmp_path / "r.html", uri).read_text(), "generations")
