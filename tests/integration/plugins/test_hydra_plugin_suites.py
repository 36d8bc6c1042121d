"""Hydra's own plugin test suites (hydra/test_utils/launcher_common_tests.py) on our sweepers,
where their semantics apply. The suites run small apps in subprocesses: the plugins must be
installed (`pip install -e .`), as a user's are."""

from __future__ import annotations

import pytest
from hydra.test_utils.launcher_common_tests import IntegrationTestSuite

# test_to_absolute_path_multirun runs the app twice in one sweep folder and expects the second
# run to execute again; our sweepers resume there instead (the issue asks for it: the same
# command continues the study or the bracket, nothing is redone or overwritten).
# Hydra's suites run dozens of small apps (two minutes on 2 cores): left out of `make test-quick`.
pytestmark = pytest.mark.slow

RESUMES = "runs twice in one sweep folder; our sweepers resume there instead of running again"


class Applicable(IntegrationTestSuite):
    not_applicable: dict[str, str] = {"to_absolute_path_multirun": RESUMES}

    @pytest.fixture(autouse=True)
    def _skip_not_applicable(self, request):
        for name, reason in self.not_applicable.items():
            if name in request.node.name:
                pytest.skip(reason)


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/sweeper=optuna5"]), ({}, ["-m", "hydra/sweeper=optuna5", "hydra/launcher=submitit_local"])],
    ids=["basic_launcher", "submitit_local"],
)
class TestOptunaSweeperIntegration(Applicable):
    """With nothing to search the sweeper runs one trial with the given overrides: the job's
    name, working folder, override_dirname and original cwd must be Hydra's."""


# The sandwich searches its own parameter: one round between 1 and 4 at precision 2 probes
# lr=2.0 once. Every job's overrides hold that lr, so the override_dirname cases do not apply.
SANDWICH = [
    "-m",
    "hydra/sweeper=sandwich",
    "hydra.sweeper.passing=1",
    "hydra.sweeper.failing=4",
    "hydra.sweeper.precision=2",
    "hydra.sweeper.constraint.metric=none",
]


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({"lr": 1.0}, SANDWICH), ({"lr": 1.0}, [*SANDWICH, "hydra/launcher=submitit_local"])],
    ids=["basic_launcher", "submitit_local"],
)
class TestSandwichSweeperIntegration(Applicable):
    not_applicable = {
        "to_absolute_path_multirun": RESUMES,
        "override_dirname": "the sandwich adds its parameter to every job's overrides",
    }


# -- our grid sweeper (the default) and our submitit launchers ----------------------------------

from hydra.test_utils.launcher_common_tests import BatchedSweeperTestSuite, LauncherTestSuite  # noqa: E402
from hydra.version import VersionBase  # noqa: E402


class InProcess:
    """Hydra's in-process suites assume no version_base was set (jobs chdir into their folder);
    an earlier test's `initialize_config_dir(version_base="1.3")` leaves it set in this process."""

    @pytest.fixture(autouse=True)
    def _unset_version_base(self):
        from hydra.version import _UNSPECIFIED_

        base = VersionBase.instance()
        before, base.version_base = base.version_base, _UNSPECIFIED_
        yield
        base.version_base = before


@pytest.mark.parametrize(
    "task_launcher_cfg, extra_flags",
    [({}, ["-m", "hydra/sweeper=grid", "hydra.sweeper.resume=false"])],
    ids=["basic_launcher"],
)
class TestGridSweeperIntegration(IntegrationTestSuite):
    """The grid is Hydra's basic sweeper where every job succeeds: every case applies. Hydra's
    suite reruns a sweep folder with another task and expects it run again, so without resuming."""


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("basic", ["hydra/sweeper=grid", "hydra.sweeper.max_batch_size=2"])],
)
class TestGridSweeperBatches(InProcess, BatchedSweeperTestSuite):
    """max_batch_size splits the grid into batches, as Hydra's basic sweeper does."""


@pytest.mark.parametrize(
    "launcher_name, overrides",
    [("sweep_sft_local", ["hydra.launcher.timeout_min=2", "hydra.launcher.poll_s=0.2"])],
)
class TestOurLocalLauncher(InProcess, LauncherTestSuite):
    """Our launcher (submitit's local executor) passes Hydra's launcher suite: jobs get their
    overrides, config and folders as with hydra-submitit-launcher. (Its IntegrationTestSuite
    passes too, 45 s more: the job side is hydra-submitit-launcher's, unchanged, so it is not run.)"""
