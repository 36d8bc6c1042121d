"""Delivery of one MLflow run's records from a background thread, through server outages.

Training only appends to a buffer. A thread sends the buffer in `log_batch` calls of at most
1000 points and drops a batch only once the server has confirmed it. A failed batch is sent
again unchanged: the timestamp is fixed when the point is logged, and the SQL store ignores a
point whose (key, step, timestamp, value) it already holds. So a retry never duplicates a point.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BATCH = 1000  # MLflow's limit on metrics per log_batch
SEND_EVERY_S = 1.0  # a partial batch waits at most this long
BACKOFF_S = (0.5, 5.0)  # first and longest pause between retries during an outage


def transient(exc: BaseException) -> bool:
    """Worth retrying: the server is unreachable, timing out or failing (5xx, 429); not a 4xx,
    which the same request would get again."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        status = exc.get_http_status_code()
        return status >= 500 or status == 429
    return True  # connection refused or reset, a timeout, a broken response


@dataclass
class Op:
    """A record other than a metric point (params, a tag, an artifact), sent in logging order."""

    describe: str
    send: Callable[[Any], Any]  # called with the payload, a copy taken when it was logged
    payload: Any


class Delivery:
    """One run's records: buffered by the caller, sent by a background thread, retried through outages."""

    def __init__(self, client, run_id: str, uri: str, max_points: int):
        self.client, self.run_id, self.uri, self.max_points = client, run_id, uri, max_points
        self._cond = threading.Condition()
        self._points: list = []  # mlflow Metric, oldest first; only this thread removes from it
        self._ops: deque[Op] = deque()
        self._rejected: list[tuple[str, str]] = []  # (what, the server's refusal)
        self._rejected_points: list = []
        self._closing = False
        self._draining = 0  # callers waiting in drain(): send without waiting for a full batch
        self.down_since: float | None = None
        self.last_error: str | None = None
        self.last_success = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-delivery-{run_id[:8]}", daemon=True)
        self._thread.start()

    # The training side: never touches the network.

    def add_points(self, points: list, wait_s: float) -> None:
        """Buffer metric points; TimeoutError when the buffer stays full for `wait_s` (a long outage)."""
        with self._cond:
            if len(self._points) + len(points) > self.max_points:
                self._cond.notify_all()
                if not self._cond.wait_for(lambda: len(self._points) + len(points) <= self.max_points, wait_s):
                    raise TimeoutError(f"{len(self._points)} metric points buffered (tracking.max_buffered_points)")
            self._points += points
            if len(self._points) >= BATCH:
                self._cond.notify_all()

    def add_op(self, describe: str, send: Callable[[Any], Any], payload: Any = None) -> None:
        """Queue a record other than a metric point: `send(payload)` later, with a copy of the payload taken now."""
        with self._cond:
            self._ops.append(Op(describe, send, copy.deepcopy(payload)))
            self._cond.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Wait until everything logged so far is delivered; give up after `timeout_s` without
        progress (a server that keeps taking batches is waited for)."""
        started = time.monotonic()
        with self._cond:
            self._draining += 1
            self._cond.notify_all()
            try:
                while self._points or self._ops:
                    idle = time.monotonic() - max(self.last_success, started)
                    if self.down_since is not None and idle >= timeout_s:
                        return False
                    self._cond.wait(min(1.0, max(0.05, timeout_s - idle)))
                return True
            finally:
                self._draining -= 1

    def stop(self) -> None:
        """End the thread after its current attempt; what is left stays in undelivered()."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join(timeout=30)

    def undelivered(self) -> dict[str, Any]:
        """What is left to send, and what the server refused, as JSON for the spill file."""
        with self._cond:
            return {
                "metrics": [[m.key, m.value, m.timestamp, m.step] for m in self._rejected_points + self._points],
                "records": [{"what": op.describe, "payload": _plain(op.payload)} for op in self._ops],
                "rejected": [{"what": what, "error": error} for what, error in self._rejected],
            }

    def rejected(self) -> list[tuple[str, str]]:
        """(what, the server's refusal) for each record refused with a 4xx."""
        with self._cond:
            return list(self._rejected)

    # The delivery thread.

    def _loop(self) -> None:
        backoff = BACKOFF_S[0]
        while True:
            with self._cond:
                self._cond.wait_for(self._ready, SEND_EVERY_S)
                if self._closing:
                    return
                op = self._ops[0] if self._ops else None
                batch = [] if op or not self._points else self._points[:BATCH]
            if op is None and not batch:
                continue
            try:
                if op is not None:
                    op.send(op.payload)
                else:
                    self.client.log_batch(self.run_id, metrics=batch)
            except Exception as exc:  # noqa: BLE001 - classified: retried or recorded, never lost
                if transient(exc):
                    self._outage(exc)
                    with self._cond:
                        self._cond.wait_for(lambda: self._closing, backoff)
                    backoff = min(2 * backoff, BACKOFF_S[1])
                    continue
                self._refused(op.describe if op else f"{len(batch)} metric points", exc, op, batch)
                continue
            backoff = BACKOFF_S[0]
            self._done(op, len(batch))

    def _ready(self) -> bool:
        return self._closing or bool(self._ops) or len(self._points) >= BATCH or (self._draining and bool(self._points))

    def _done(self, op: Op | None, points: int) -> None:
        with self._cond:
            if op is not None:
                self._ops.popleft()
            del self._points[:points]
            self.last_success = time.monotonic()
            if self.down_since is not None:
                log.warning(
                    "MLflow server %s is back after %.0f s; delivering the %d buffered metric points",
                    self.uri,
                    self.last_success - self.down_since,
                    len(self._points) + points,
                )
                self.down_since = None
            self._cond.notify_all()

    def _outage(self, exc: Exception) -> None:
        with self._cond:
            self.last_error = f"{type(exc).__name__}: {exc}"[:500]
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning(
                    "MLflow server %s unreachable (%s); training goes on, %d metric points buffered, "
                    "retrying until it is back",
                    self.uri,
                    self.last_error,
                    len(self._points),
                )
            self._cond.notify_all()

    def _refused(self, what: str, exc: Exception, op: Op | None, batch: list) -> None:
        """The server refused it (4xx): sending it again would not help; keep it for the report."""
        log.error("MLflow server %s refused %s: %s", self.uri, what, exc)
        with self._cond:
            self._rejected.append((what, f"{type(exc).__name__}: {exc}"[:2000]))
            if op is not None:
                self._ops.popleft()
            else:
                self._rejected_points += batch
                del self._points[: len(batch)]
            self._cond.notify_all()


def _plain(payload: Any) -> Any:
    """A payload as JSON can hold it: MLflow Param lists as {key: value}."""
    if isinstance(payload, list) and payload and hasattr(payload[0], "key"):
        return {p.key: p.value for p in payload}
    return payload
