"""Config of the sandwich sweeper, registered as hydra/sweeper=sandwich."""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore

from sweep_sft.metrics import GENERAL_DROP


@dataclass
class ConstraintConf:
    # Trial metric the constraint reads (from the job's metrics.json), e.g. general_drop.
    metric: str = GENERAL_DROP
    # Comparison: <=, >=, <, >.
    op: str = "<="
    # The tolerance, e.g. 0.02 for general_drop <= 0.02.
    threshold: float = 0.02
    # With several seeds per probe: "all" must pass, or their "mean" must.
    rule: str = "all"


@dataclass
class SandwichSweeperConf:
    _target_: str = "hydra_plugins.sweep_sft_sandwich.sandwich_sweeper.SandwichSweeper"
    # The config key searched, e.g. lr or data.mix.task_ratio.reasoning.addition.
    param: str = "lr"
    # The side that passes (the anchor; on a log scale a tiny value stands for 0).
    passing: float = 1e-5
    # The side that fails (a harmful lr, a ratio of 0).
    failing: float = 1e-2
    # log: probes split the bracket geometrically and precision is a ratio > 1; linear: a step.
    scale: str = "log"
    precision: float = 1.5
    # Probes per round, run in parallel by the launcher; k probes split the bracket into k + 1 parts.
    probes_per_round: int = 1
    # Seeds per probe (trainer.seed = 0..seeds-1).
    seeds: int = 1
    constraint: ConstraintConf = field(default_factory=ConstraintConf)
    # Run the passing side once first and stop with an error if it fails (a data ratio's
    # full share must be learned; lr ~ 0 passes by definition and needs no trial).
    verify_passing: bool = False
    # A round's probes all run at once (the next round needs them all). auto: through our
    # launchers each result is kept as it arrives, so a resumed sweep reruns only the cut-off ones.
    dispatch: str = "auto"


ConfigStore.instance().store(group="hydra/sweeper", name="sandwich", node=SandwichSweeperConf, provider="sweep_sft")
