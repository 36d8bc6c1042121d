"""The final evaluation's progress, one phase at a time (exact match, pass@k, train recall, the
general probe): a tqdm bar per phase when `trainer.progress` is on (it stays, with its elapsed
time, when the phase ends), else one line per phase when it ends, with its elapsed seconds.
One or the other, never both: in a log file (Slurm, CI) the lines are what shows. Ranks other
than the first show nothing (they evaluate the same data)."""

from __future__ import annotations

import sys
import time
from types import TracebackType

BAR, LINES, QUIET = "bar", "lines", "quiet"  # how a phase shows itself


class Phase:
    """One phase of the final evaluation: `with Phase("exact match over 40 prompts", 40, BAR) as p:`
    then `p.advance(n)` as work is done; `show` is BAR, LINES or QUIET."""

    def __init__(self, title: str, total: int, show: str = LINES) -> None:
        self.title, self.total, self.show = title, total, show
        self._bar = None
        self.started = 0.0

    def __enter__(self) -> Phase:
        self.started = time.perf_counter()
        if self.show == BAR:
            from tqdm.auto import tqdm

            # In a log file a bar redrawn ten times a second is noise (as the training bar does).
            interval = 0.1 if sys.stderr.isatty() else 15.0
            self._bar = tqdm(total=self.total, desc=self.title, dynamic_ncols=True, mininterval=interval)
        return self

    def advance(self, n: int = 1) -> None:
        """n more units (prompts or samples) done."""
        if self._bar is not None:
            self._bar.update(n)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        elif kind is None and self.show == LINES:
            print(f"final evaluation: {self.title} in {time.perf_counter() - self.started:.1f}s", flush=True)
