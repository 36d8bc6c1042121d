"""`python -m sweep_sft.compare A B`: per-task_type deltas of B against A, regressions flagged."""

from __future__ import annotations

import json

import pytest

from sweep_sft.compare import main

BASE = {
    "val/loss/reasoning/addition": 1.0,
    "task/exact_match/reasoning/addition": 0.50,
    "val/loss/classification/sentiment": 0.10,
    "task/exact_match/classification/sentiment": 1.00,
    "val/loss": 0.55,
    "general_drop": 0.01,
}


def trial(tmp_path, name: str, measured_with: dict | None = None, **changes: float):
    """A trial folder with BASE's metrics changed; `measured_with` adds metrics.json's other keys
    (scorers, general_source) as a trial writes them."""
    folder = tmp_path / name
    folder.mkdir()
    metrics = {**BASE, **{k.replace("__", "/"): v for k, v in changes.items()}}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, **(measured_with or {})}))
    return str(folder)


def rows(out: str) -> dict[str, str]:
    """task_type -> its table line."""
    return {line.split()[0]: line for line in out.splitlines() if "/" in line.split(" ")[0] and "=" not in line}


def test_identical_trials_show_zero_deltas_and_no_regression(tmp_path, capsys):
    assert main([trial(tmp_path, "a"), trial(tmp_path, "b")]) == 0
    out = capsys.readouterr().out
    assert "no regression beyond the tolerances" in out
    assert rows(out)["reasoning/addition"].split()[3] == "+0.000"


def test_an_exact_match_drop_is_flagged_on_its_task_only(tmp_path, capsys):
    b = trial(tmp_path, "b", task__exact_match__reasoning__addition=0.30)
    assert main([trial(tmp_path, "a"), b]) == 1
    table = rows(capsys.readouterr().out)
    assert "exact match -0.20" in table["reasoning/addition"]
    assert table["classification/sentiment"].rstrip().endswith("-")


def test_tolerances_decide_what_counts(tmp_path, capsys):
    a = trial(tmp_path, "a")
    b = trial(tmp_path, "b", task__exact_match__reasoning__addition=0.47, val__loss__classification__sentiment=0.104)
    assert main([a, b]) == 0  # -0.03 exact match and +4% loss are within the defaults (0.05, 5%)
    assert main([a, b, "--em-tolerance", "0.01", "--loss-tolerance", "0.01"]) == 1
    out = capsys.readouterr().out
    assert "val loss +4%" in out and "exact match -0.03" in out


def test_forgetting_is_a_regression(tmp_path, capsys):
    assert main([trial(tmp_path, "a"), trial(tmp_path, "b", general_drop=0.2)]) == 1
    assert "regressions: general ability" in capsys.readouterr().out


def test_a_missing_trial_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path), trial(tmp_path, "b")]) == 2
    assert f"{tmp_path / 'metrics.json'}: no metrics.json" in capsys.readouterr().err


@pytest.mark.slow
def test_mlflow_run_ids_are_compared_too(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep-sft")
    ids = []
    for em in (0.5, 0.1):
        run = client.create_run(experiment)
        for key, value in {**BASE, "task/exact_match/reasoning/addition": em}.items():
            client.log_metric(run.info.run_id, key, value)
        ids.append(run.info.run_id)
    assert main([*ids, "--tracking-uri", uri]) == 1
    assert "exact match -0.40" in rows(capsys.readouterr().out)["reasoning/addition"]
    assert main(["no-such-run", ids[0], "--tracking-uri", uri]) == 2
    assert "no-such-run: neither a trial folder nor a run in" in capsys.readouterr().err


SAMPLED = {
    "task__pass_at_4__reasoning__addition": 0.80,
    "task__sample_match__reasoning__addition": 0.45,
    "task__pass_at_4__classification__sentiment": 1.0,
    "task__sample_match__classification__sentiment": 0.9,
}


def test_sampled_metrics_tell_a_fluctuation_from_a_real_drop(tmp_path, capsys):
    a = trial(tmp_path, "a", **SAMPLED)
    # Greedy exact match fell, but the right answer is sampled as often as before.
    held = trial(tmp_path, "held", task__exact_match__reasoning__addition=0.30, **SAMPLED)
    assert main([a, held]) == 0
    out = capsys.readouterr().out
    verdict = "exact match -0.20 but pass@4 0.80->0.80, sample match 0.45->0.45 held: fluctuation"
    assert verdict in rows(out)["reasoning/addition"]
    assert "pass@4 A" in out and "no regression beyond the tolerances" in out
    fell = trial(
        tmp_path,
        "fell",
        task__exact_match__reasoning__addition=0.30,
        **{**SAMPLED, "task__pass_at_4__reasoning__addition": 0.40},
    )
    assert main([a, fell]) == 1
    out = capsys.readouterr().out
    assert "exact match -0.20, pass@4 0.80->0.40, sample match 0.45->0.45: real drop" in rows(out)["reasoning/addition"]
    assert "regressions: reasoning/addition" in out


def test_a_saturated_pass_at_k_does_not_hide_a_large_drop(tmp_path, capsys):
    """pass@4 near 1 in both runs while exact match collapses: the share of right samples fell."""
    a = trial(tmp_path, "a", **SAMPLED)
    b = trial(
        tmp_path,
        "b",
        task__exact_match__classification__sentiment=0.10,
        **{
            **SAMPLED,
            "task__pass_at_4__classification__sentiment": 0.97,
            "task__sample_match__classification__sentiment": 0.15,
        },
    )
    assert main([a, b]) == 1
    line = rows(capsys.readouterr().out)["classification/sentiment"]
    assert "exact match -0.90, pass@4 1.00->0.97, sample match 0.90->0.15: real drop" in line


def test_without_pass_at_k_in_both_runs_a_drop_stays_a_regression(tmp_path, capsys):
    a = trial(tmp_path, "a", task__pass_at_4__reasoning__addition=0.8)
    b = trial(tmp_path, "b", task__exact_match__reasoning__addition=0.30)
    assert main([a, b]) == 1
    assert "pass@" not in capsys.readouterr().out


def test_an_evaluation_file_is_compared_like_a_trial(tmp_path, capsys):
    (tmp_path / "evaluation.json").write_text(json.dumps({"target": "x", "metrics": BASE}))
    assert main([trial(tmp_path, "a"), str(tmp_path / "evaluation.json")]) == 0
    (tmp_path / "broken.json").write_text("[1, 2]")
    assert main([trial(tmp_path, "b"), str(tmp_path / "broken.json")]) == 2
    assert "broken.json: not a metrics file" in capsys.readouterr().err


EXACT = {"reasoning/addition": "exact", "classification/sentiment": "exact"}


def test_a_task_type_scored_by_another_scorer_is_marked_not_comparable_and_not_flagged(tmp_path, capsys):
    a = trial(tmp_path, "a", {"scorers": EXACT})
    chrf = {"scorers": {**EXACT, "reasoning/addition": "chrf"}}
    b = trial(tmp_path, "b", chrf, task__exact_match__reasoning__addition=0.10)
    assert main([a, b]) == 0  # a drop of 0.40, but under another scorer
    out = capsys.readouterr().out
    line = rows(out)["reasoning/addition"]
    assert line.split()[6] == "n/c" and line.endswith("not comparable: scorer exact (A) vs chrf (B)")
    assert rows(out)["classification/sentiment"].rstrip().endswith("-")
    assert "not compared (A and B measured them differently, n/c above): reasoning/addition" in out
    assert "no regression beyond the tolerances" in out
    # Val loss does not depend on the scorer: its rise is still a regression.
    c = trial(tmp_path, "c", chrf, val__loss__reasoning__addition=1.5)
    assert main([a, c]) == 1
    assert (
        "val loss +50%; not comparable: scorer exact (A) vs chrf (B)"
        in rows(capsys.readouterr().out)["reasoning/addition"]
    )


def test_general_drop_on_another_general_set_is_not_compared(tmp_path, capsys):
    a = trial(tmp_path, "a", {"general_source": "embedded"})
    b = trial(tmp_path, "b", {"general_source": "base_answers"}, general_drop=0.2)
    assert main([a, b]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("general_drop"))
    assert line.split()[3] == "n/c" and line.endswith("not comparable: general probe embedded (A) vs base_answers (B)")
    assert "not compared (A and B measured them differently, n/c above): general ability" in out
    same = trial(tmp_path, "same", {"general_source": "embedded"}, general_drop=0.2)
    assert main([a, same]) == 1  # the same set: forgetting, as before
    assert "regressions: general ability" in capsys.readouterr().out


def test_a_run_that_does_not_say_what_measured_it_is_compared_as_before(tmp_path, capsys):
    """Runs written before scorers and general sources were recorded: unknown, no note."""
    old = trial(tmp_path, "old")
    b = trial(
        tmp_path,
        "b",
        {"scorers": {"reasoning/addition": "chrf"}, "general_source": "base_answers"},
        task__exact_match__reasoning__addition=0.10,
        general_drop=0.2,
    )
    assert main([old, b]) == 1
    out = capsys.readouterr().out
    assert "not comparable" not in out and "n/c" not in out
    assert "regressions: reasoning/addition, general ability" in out
    # Keys a trial does not write that way are taken as unknown too, not an error.
    odd = trial(tmp_path, "odd", {"scorers": ["exact"], "general_source": 3})
    assert main([odd, b]) == 1 and "not comparable" not in capsys.readouterr().out


def test_an_evaluation_file_says_what_measured_it(tmp_path, capsys):
    record = {"target": "x", "metrics": BASE, "scorers": {**EXACT, "classification/sentiment": "normalized"}}
    (tmp_path / "evaluation.json").write_text(json.dumps({**record, "general_source": "/data/general.jsonl"}))
    assert (
        main(
            [trial(tmp_path, "a", {"scorers": EXACT, "general_source": "embedded"}), str(tmp_path / "evaluation.json")]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert rows(out)["classification/sentiment"].endswith("not comparable: scorer exact (A) vs normalized (B)")
    assert "not comparable: general probe embedded (A) vs /data/general.jsonl (B)" in out


@pytest.mark.slow
def test_an_mlflow_run_says_what_measured_it_by_its_scorer_tags_and_general_source_param(tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    experiment = client.create_experiment("sweep-sft")
    ids = []
    for scorer, source in (("exact", "embedded"), ("chrf", "base_answers")):
        run = client.create_run(experiment)
        for key, value in {**BASE, "task/exact_match/reasoning/addition": 0.5 if scorer == "exact" else 0.1}.items():
            client.log_metric(run.info.run_id, key, value)
        client.set_tag(run.info.run_id, "sweep_sft.scorer.reasoning/addition", scorer)
        client.log_param(run.info.run_id, "general.source", source)
        ids.append(run.info.run_id)
    assert main([*ids, "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert rows(out)["reasoning/addition"].endswith("not comparable: scorer exact (A) vs chrf (B)")
    assert "not comparable: general probe embedded (A) vs base_answers (B)" in out
