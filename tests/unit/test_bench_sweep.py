"""The sweep benches' arithmetic on made-up trials: slot-busy share, best value, time to within 1%
of the best, the JSON rows; the objective's curve and pruning; the scale bench's figures."""

from __future__ import annotations

import json
import sys
from collections import Counter

import pytest

from helpers import ROOT

BENCH = ROOT / "bench"


@pytest.fixture(scope="module")
def bench():
    """bench/ on sys.path (its scripts import each other by name, as when run), for this module."""
    sys.path.insert(0, str(BENCH))
    try:
        import sweep_efficiency
        import sweep_objective
        import sweep_rows
        import sweep_scale

        yield {"rows": sweep_rows, "eff": sweep_efficiency, "obj": sweep_objective, "scale": sweep_scale}
    finally:
        sys.path.remove(str(BENCH))


def trial(t_start, t_end, value, state="COMPLETE", steps=60):
    return {"t_start": t_start, "t_end": t_end, "value": value, "state": state, "steps": steps}


ORIGIN = 1000.0
TRIALS = [
    trial(1001, 1011, 2.0),  # 10 s
    trial(1002, 1004, 0.5, "PRUNED", steps=10),  # lower than the best, but pruned: no final value
    trial(1003, 1009, 1.009),  # 6 s, within 1% of the best (1.0), first to end
    trial(1011, 1019, 1.0),  # 8 s, the best
]


def test_slot_busy_is_summed_trial_time_over_slots_times_wall(bench):
    r = bench["rows"]
    assert r.slot_busy(TRIALS, slots=2, wall_s=20.0) == pytest.approx((10 + 2 + 6 + 8) / 40)
    assert r.slot_busy([trial(0, 5, 1.0)] * 4, slots=4, wall_s=5.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="slots >= 1 and wall_s > 0"):
        r.slot_busy(TRIALS, slots=0, wall_s=1.0)


def test_best_and_time_to_best_count_complete_trials_only(bench):
    r = bench["rows"]
    assert r.best_value(TRIALS) == 1.0
    # the 1.009 trial (within 1% of 1.0) ended 9 s after the origin, before the best itself
    assert r.time_to_within(TRIALS, ORIGIN, 1.0) == pytest.approx(9.0)
    # a stricter target: only the best trial reaches it
    assert r.time_to_within(TRIALS, ORIGIN, 0.995) == pytest.approx(19.0)
    # never reached, or nothing to reach
    assert r.time_to_within(TRIALS, ORIGIN, 0.5) is None
    assert r.time_to_within(TRIALS, ORIGIN, None) is None
    assert r.best_value([trial(0, 1, 0.1, "PRUNED")]) is None
    # the 1% is of the target's size, so a negative best works the same way
    assert r.time_to_within([trial(1000, 1004, -1.995)], ORIGIN - 10, -2.0) == pytest.approx(14.0)


def test_a_row_has_the_json_keys_and_round_trips(bench):
    r = bench["rows"]
    row = r.make_row("async", "median", TRIALS, ORIGIN, wall_s=20.0, slots=2)
    assert list(row)[: len(r.KEYS)] == list(r.KEYS)
    assert row["trial_steps"] == 60 + 10 + 60 + 60 and row["trials"] == 4 and row["pruned"] == 1
    assert row["best_value"] == 1.0 and row["time_to_best_s"] == pytest.approx(9.0)
    assert row["slot_busy"] == pytest.approx(26 / 40)
    assert json.loads(json.dumps(row)) == row
    empty = r.make_row("batch", "none", [trial(1001, 1002, 3.0, "FAIL")], ORIGIN, wall_s=4.0, slots=1)
    assert empty["best_value"] is None and empty["time_to_best_s"] is None


def test_time_to_the_run_best_uses_the_best_of_all_rows(bench):
    r = bench["rows"]
    poorer = [trial(1000, 1002, 1.5)]  # settles at 1.5 in 2 s: fast to its own best, never to the run's
    rows = [
        r.make_row("batch", "none", TRIALS, ORIGIN, 20.0, 2),
        r.make_row("ray_asha", "asha", poorer, ORIGIN, 5.0, 2),
    ]
    assert rows[1]["time_to_best_s"] == pytest.approx(2.0)
    assert r.add_run_best(rows, [TRIALS, poorer], [ORIGIN, ORIGIN]) == 1.0
    assert rows[0]["time_to_run_best_s"] == pytest.approx(9.0) and rows[1]["time_to_run_best_s"] is None
    text = r.table(rows)
    assert "| batch | none | 4 (1) | 20.0 | 65% | 190 | 1.0000 | 9.0 | 9.0 |" in text
    assert text.splitlines()[-1].endswith("| 2.0 | - |")


def test_job_records_read_the_trials_metrics_files(bench, tmp_path):
    for num, state in ((0, "COMPLETE"), (1, "PRUNED")):
        (tmp_path / str(num)).mkdir()
        record = {"metrics": {"val/loss": 0.5 + num}, "state": state, "steps": 60 - 50 * num, "number": num}
        record["params"] = {"x": 1e-3 * (num + 1), "w": 0.5}
        record["timing"] = {"t_start": 10.0 + num, "t_end": 20.0}
        (tmp_path / str(num) / "metrics.json").write_text(json.dumps(record))
    records = bench["eff"].job_records(tmp_path)
    assert [(t["number"], t["state"], t["steps"], t["value"]) for t in records] == [
        (0, "COMPLETE", 60, 0.5),
        (1, "PRUNED", 10, 1.5),
    ]
    assert bench["rows"].slot_busy(records, slots=2, wall_s=10.0) == pytest.approx(19 / 20)
    assert bench["eff"].same_points(records, [{"x": 2e-3, "w": 0.5}, {"x": 1e-3, "w": 0.5}])
    assert not bench["eff"].same_points(records, [{"x": 2e-3, "w": 0.5}, {"x": 1e-3, "w": 0.6}])


def test_the_shared_points_are_what_a_seeded_random_sampler_proposes(bench):
    o = bench["obj"]
    first = o.points(5, seed=0)
    assert first == o.points(5, seed=0) != o.points(5, seed=1)
    assert o.points(3, seed=0) == first[:3]  # a longer run extends a shorter one
    assert all(o.X_RANGE[0] <= p["x"] <= o.X_RANGE[1] and o.W_RANGE[0] <= p["w"] <= o.W_RANGE[1] for p in first)


def test_the_curve_is_seeded_and_a_stop_prunes_it(bench):
    o = bench["obj"]
    assert o.loss(1e-3, 0.4, 30) == o.loss(1e-3, 0.4, 30) != o.loss(1e-3, 0.4, 35)
    # the best point beats a bad one at every evaluation
    assert all(o.loss(10**-3.5, 0.3, t) < o.loss(1e-1, 0.9, t) for t in range(0, 61, 5))
    seen = []

    def report(step, value):
        seen.append(step)
        if step == 20:
            raise o.Stop

    record = o.run_curve(1e-3, 0.4, report, step_s=0.0)
    assert record["state"] == "PRUNED" and record["steps"] == 20 and seen == [0, 5, 10, 15, 20]
    full = o.run_curve(1e-3, 0.4, None, step_s=0.0)
    assert full["state"] == "COMPLETE" and full["steps"] == 60 and full["value"] == o.loss(1e-3, 0.4, 60)
    assert full["t_end"] >= full["t_start"]


def test_the_plan_and_bad_arguments(bench, capsys):
    e = bench["eff"]
    args = e.parse_args(["--arms", "batch,ray_asha", "--pruners", "none,median", "--quick"])
    assert args.trials == 12 and e.plan(args) == [("batch", "none"), ("batch", "median"), ("ray_asha", "asha")]
    with pytest.raises(SystemExit):
        e.parse_args(["--arms", "batch,bogus"])
    assert "--arms: unknown ['bogus']" in capsys.readouterr().err


def test_scale_figures_per_trial_and_per_minute(bench):
    s = bench["scale"]
    usage = {"cpu_s": 50.0, "rss_start_mb": 30.0, "rss_end_mb": 90.0, "rss_peak_mb": 88.0}
    r = s.summarize(Counter({"sbatch": 10, "sacct": 50}), usage, wall_s=120.0, trials=500, states={"COMPLETE": 500})
    assert r["cpu_s_per_trial"] == pytest.approx(0.1) and r["scheduler_calls_per_min"] == pytest.approx(30.0)
    assert r["scheduler_calls"] == {"sbatch": 10, "sacct": 50, "squeue": 0, "scancel": 0, "scontrol": 0}
    assert r["recorded"] == 500 and r["rss_peak_mb"] == 90.0
    assert "| controller CPU s per trial | 0.100 |" in s.report(r)
