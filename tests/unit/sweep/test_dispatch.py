"""sweep_sft.sweep.dispatch with a fake launcher: slots kept full, a stop drains what is in
flight, batches split where job numbers have gaps, a failure stops the jobs in flight."""

from __future__ import annotations

import pytest

from sweep_sft.errors import ConfigError
from sweep_sft.sweep.dispatch import Job, check_settings, dispatch


class FakeLauncher:
    """Each job ends after `ticks[num]` polls; records what was in flight at each submit."""

    poll_s = 0.0

    def __init__(self, ticks: dict[int, int]) -> None:
        self.ticks, self.left, self.log, self.stopped = ticks, {}, [], None
        self.launches: list[tuple[int, int]] = []

    def submit(self, overrides, num):
        self.log.append((num, sorted(self.left)))
        self.left[num] = self.ticks[num]

    def poll(self):
        for num in self.left:
            self.left[num] -= 1
        ended = [n for n, t in self.left.items() if t <= 0]
        for n in ended:
            del self.left[n]
        return [(n, f"result {n}") for n in ended]

    def stop(self, error):
        self.stopped = error

    def launch(self, job_overrides, initial_job_idx):
        self.launches.append((initial_job_idx, len(job_overrides)))
        return [f"result {initial_job_idx + i}" for i in range(len(job_overrides))]


def jobs(nums):
    it = iter(nums)
    return lambda: (lambda n: None if n is None else Job([f"x={n}"], n))(next(it, None))


def test_a_freed_slot_is_filled_at_once():
    launcher = FakeLauncher({0: 10, 1: 1, 2: 1, 3: 1})
    done = []
    returns = dispatch(launcher, "auto", 2, jobs([0, 1, 2, 3]), lambda job, r: done.append(job.num) or True)
    # jobs 2 and 3 each started while job 0 (10 polls) was still running
    assert launcher.log == [(0, []), (1, [0]), (2, [0]), (3, [0])]
    assert done == [1, 2, 3, 0] and returns == [[f"result {n}" for n in done]]


def test_a_stop_starts_nothing_more_but_waits_for_the_jobs_in_flight():
    launcher = FakeLauncher({0: 3, 1: 1, 2: 1, 3: 1})
    done = []
    dispatch(launcher, "async", 2, jobs([0, 1, 2, 3]), lambda job, r: done.append(job.num) or job.num != 1)
    assert [n for n, _ in launcher.log] == [0, 1] and sorted(done) == [0, 1]


def test_an_exception_stops_the_jobs_in_flight_and_goes_up():
    launcher = FakeLauncher({0: 5, 1: 1})

    def on_done(job, result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        dispatch(launcher, "auto", 2, jobs([0, 1]), on_done)
    assert isinstance(launcher.stopped, KeyboardInterrupt)


def test_batches_are_numbered_from_their_first_job_and_split_at_gaps():
    launcher = FakeLauncher({})
    done = []
    returns = dispatch(launcher, "batch", 3, jobs([1, 2, 4, 5, 6]), lambda job, r: done.append((job.num, r)) or True)
    assert launcher.launches == [(1, 2), (4, 1), (5, 2)]
    assert done == [(n, f"result {n}") for n in (1, 2, 4, 5, 6)] and len(returns) == 3


def test_a_launcher_without_submit_gets_batches():
    class Batches(FakeLauncher):
        submit = None

    launcher = Batches({})
    dispatch(launcher, "auto", 2, jobs([0, 1, 2]), lambda job, r: True)
    assert launcher.launches == [(0, 2), (2, 1)]


@pytest.mark.parametrize(("mode", "slots"), [("eager", 1), ("auto", 0), ("auto", 1.5), ("auto", True)])
def test_bad_settings_name_the_key(mode, slots):
    with pytest.raises(ConfigError, match="hydra.sweeper"):
        check_settings(mode, slots, "hydra.sweeper.n_jobs")
