"""The sandwich sweeper: rounds of probes through any Hydra launcher, the bracket state
written to the sweep folder after every round (and resumed from it), the result written
to `sandwich_result.json` and onto the sweep's MLflow parent run."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from sweep_sft.config.compose import task_overrides
from sweep_sft.errors import ConfigError, UserInputError
from sweep_sft.names import MULTIRUN_FILE, SANDWICH_FILE
from sweep_sft.sweep.dispatch import Job, check_settings, dispatch, queued, warn_unless_possible
from sweep_sft.sweep.jobs import job_metrics, log_to_parent
from sweep_sft.sweep.preflight import check_jobs, refuse
from sweep_sft.sweep.sandwich import Constraint, Sandwich, SandwichSpec

log = logging.getLogger(__name__)


class SandwichFailed(RuntimeError):
    """The passing side, run first (verify_passing), failed the constraint: nothing to bracket."""


STATE_FILE = "sandwich_state.json"
ROUND_FILE = "sandwich_round.json"  # the results of the round under way, as they arrive


class SandwichSweeper(Sweeper):
    """hydra/sweeper=sandwich: bisect one parameter for the last value whose trials meet the constraint."""

    def __init__(
        self,
        param: str,
        passing: float,
        failing: float,
        scale: str,
        precision: float,
        probes_per_round: int,
        seeds: int,
        constraint: DictConfig | dict,
        verify_passing: bool = False,
        dispatch: str = "auto",
    ) -> None:
        check_settings(dispatch, probes_per_round * seeds, "hydra.sweeper.probes_per_round")
        self.dispatch = dispatch
        self.param = param
        self.spec = SandwichSpec(passing, failing, scale, precision, probes_per_round, seeds, verify_passing)
        self.constraint = Constraint(**OmegaConf.to_container(OmegaConf.create(constraint)))
        self.config: DictConfig | None = None
        self.launcher = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Keep the sweep's config and build its launcher (as Hydra's sweepers do)."""
        self.hydra_context = hydra_context
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        """Run the search round by round (resuming a saved state), then write and log its result."""
        assert self.config is not None and self.launcher is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        try:
            base = self._base(arguments)
            search = self._load_or_start(sweep_dir / STATE_FILE)
        except UserInputError as exc:
            refuse(exc)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        returns: list[list[JobReturn]] = []
        job_idx = sum(len(p.results) for p in search.probes)  # resumed sweeps keep numbering on
        while probes := search.next_probes():
            # One seed: the config's own trainer.seed; several: 0..seeds-1.
            seeds = [[f"trainer.seed={seed}"] for seed in range(self.spec.seeds)] if self.spec.seeds > 1 else [[]]
            batch = [[*base, f"{self.param}={value!r}", *seed] for value in probes for seed in seeds]
            metrics, launched = self._run_round(sweep_dir, search.rounds, batch, job_idx)
            returns += launched
            job_idx += len(batch)
            n = self.spec.seeds
            search.record({v: metrics[i * n : (i + 1) * n] for i, v in enumerate(probes)})
            (sweep_dir / STATE_FILE).write_text(json.dumps(search.state_dict(), indent=1))
            (sweep_dir / ROUND_FILE).unlink(missing_ok=True)
            log.info(
                f"sandwich round {search.rounds}: {self.param} in "
                f"[{search.passing:.4g} passes, {search.failing:.4g} fails]"
            )
        result = {
            "param": self.param,
            "constraint": OmegaConf.to_container(OmegaConf.structured(self.constraint)),
            **search.result(),
        }
        (sweep_dir / SANDWICH_FILE).write_text(json.dumps(result, indent=1))
        bracket = result["bracket"]
        log_to_parent(
            sweep_dir,
            SANDWICH_FILE,
            result,
            {
                "sandwich/passing": bracket["passing"],
                "sandwich/failing": bracket["failing"],
                "sandwich/trials": result["trials"],
            },
        )
        if search.passing_verified is False:
            c = self.constraint
            got = [r.get(c.metric) if r else "a failed trial" for r in search.probes[0].results]
            raise SandwichFailed(
                f"the passing side {self.param}={self.spec.passing} fails the constraint {c.metric} {c.op} "
                f"{c.threshold} (got {got}); nothing to bracket: choose a passing side "
                f"that passes (hydra.sweeper.passing) or a looser threshold"
            )
        return returns

    def _run_round(
        self, sweep_dir: Path, round_no: int, batch: list[list[str]], first: int
    ) -> tuple[list[dict[str, float] | None], list[list[JobReturn]]]:
        """A round's jobs (numbered from `first`), each result kept in ROUND_FILE as it ends: a
        sweep cut off mid-round reruns only the jobs that had not ended."""
        done = _round_so_far(sweep_dir / ROUND_FILE, round_no, batch, first)
        if done:
            log.info(f"sandwich round {round_no + 1}: {len(done)} of {len(batch)} jobs ended before the sweep stopped")
        todo = [Job(overrides, first + i) for i, overrides in enumerate(batch) if first + i not in done]

        def on_done(job: Job, result: JobReturn) -> bool:
            done[job.num] = job_metrics(result)
            record = {"round": round_no, "first": first, "jobs": batch, "results": {str(k): v for k, v in done.items()}}
            (sweep_dir / ROUND_FILE).write_text(json.dumps(record, indent=1))
            return True

        next_job = queued(todo, self.validate_batch_is_legal)
        launched = dispatch(self.launcher, self.dispatch, len(batch), next_job, on_done)
        return [done[first + i] for i in range(len(batch))], launched

    def preflight(self, config: DictConfig, config_loader) -> None:
        """Before any trial (sweep_sft.sweep.preflight): the arguments, a state to resume, and both
        sides composed and validated; every probe lies between them, so they stand for the range."""
        warn_unless_possible(config, self.dispatch)
        base = self._base(task_overrides(config.hydra))
        self._saved(Path(config.hydra.sweep.dir) / STATE_FILE)
        sides = {"hydra.sweeper.passing": self.spec.passing, "hydra.sweeper.failing": self.spec.failing}
        jobs = [[*base, f"{self.param}={value!r}"] for value in sides.values()]
        check_jobs(config_loader, config, jobs, [f"{key}={value}" for key, value in sides.items()])

    def _base(self, arguments: list[str]) -> list[str]:
        """The command line's overrides, less the searched parameter (the probes set it)."""
        parsed = OverridesParser.create().parse_overrides(arguments)
        sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
        if sweeps:
            raise ConfigError(f"the sandwich sweeper searches {self.param} itself; remove the sweep {' '.join(sweeps)}")
        return [o.input_line for o in parsed if o.get_key_element() != self.param]

    def _load_or_start(self, path: Path) -> Sandwich:
        search = self._saved(path)
        if search is None:
            return Sandwich(self.spec, self.constraint)
        log.info(f"resuming the sandwich search from {path} after {search.rounds} rounds")
        return search

    def _saved(self, path: Path) -> Sandwich | None:
        """The search saved in the sweep folder, which must be this command's own."""
        if not path.exists():
            return None
        search = Sandwich.from_state(json.loads(path.read_text()))
        if (search.spec, search.constraint) != (self.spec, self.constraint):
            raise ConfigError(
                f"{path} holds a different search ({search.spec}, {search.constraint}) than this command "
                f"({self.spec}, {self.constraint}); resume with the same settings, or pass a new hydra.sweep.dir"
            )
        return search


def _round_so_far(path: Path, round_no: int, batch: list[list[str]], first: int) -> dict[int, dict[str, float] | None]:
    """The results (by job number) of this very round that a cut-off sweep recorded; none when the
    file is of another round or other jobs."""
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text())
        same = (record["round"], record["first"], record["jobs"]) == (round_no, first, batch)
        return {int(k): v for k, v in record["results"].items()} if same else {}
    except (ValueError, KeyError, TypeError):
        log.warning(f"{path}: unreadable; the round is run again in full")
        return {}
