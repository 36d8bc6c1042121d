"""The low-level MLflow helpers every tracking module shares: which store, failing fast on an HTTP
server and retrying through its outages, finding runs and experiments, and the sweep's parent record.

Nothing here holds a run open (sweep_sft.tracking.runs does); mlflow is imported only where it is called,
so the guardian process (sweep_sft.tracking.run_guard) and `--cfg job` start without it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep_sft.errors import UserInputError
from sweep_sft.names import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PARENT_FILE
from sweep_sft.redact import redact
from sweep_sft.tracking.delivery import BACKOFF_S, transient

if TYPE_CHECKING:
    from sweep_sft.config.schema import TrackingConfig

# MLflow's own HTTP client retries a failed request 7 times with backoff (minutes) and waits
# 120 s for an answer; our delivery thread retries instead, so it must see a failure at once.
HTTP_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}

# The characters MLflow takes in a param name.
PARAM_KEY = re.compile(r"[\w\-. :/]+")

log = logging.getLogger(__name__)


class TrackingError(UserInputError):
    """The tracking server did not take a run's records within tracking.outage_timeout_s."""


# MLflow's own variables, honoured as MLflow honours them where the config leaves the choice open
# (tracking.uri, tracking.experiment null); a user's MLFLOW_TRACKING_TOKEN and the like MLflow reads itself.
URI_ENV = "MLFLOW_TRACKING_URI"
EXPERIMENT_NAME_ENV, EXPERIMENT_ID_ENV = "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"
DEFAULT_EXPERIMENT = "sweep-sft"


def default_uri() -> str:
    """The store a trial uses without tracking.uri, and the tools' --tracking-uri default:
    $MLFLOW_TRACKING_URI, else the local sqlite:///<cwd>/mlflow.db."""
    return os.environ.get(URI_ENV) or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def tracking_uri(cfg: TrackingConfig) -> str:
    """The store a tracking config names: tracking.uri, else the default (default_uri)."""
    return cfg.uri or default_uri()


def run_experiment(client, configured: str | None) -> str:
    """The id of the experiment a run goes to: tracking.experiment, else $MLFLOW_EXPERIMENT_NAME,
    else $MLFLOW_EXPERIMENT_ID (which must exist, as MLflow requires), else sweep-sft."""
    name = configured or os.environ.get(EXPERIMENT_NAME_ENV)
    wanted_id = None if name else os.environ.get(EXPERIMENT_ID_ENV)
    if not wanted_id:
        return experiment_id(client, name or DEFAULT_EXPERIMENT)
    from mlflow.exceptions import MlflowException

    try:
        experiment = client.get_experiment(wanted_id)
    except MlflowException as exc:
        raise UserInputError(
            f"{EXPERIMENT_ID_ENV}={wanted_id} (tracking.experiment unset): no such experiment in "
            f"{client.tracking_uri}; set tracking.experiment or unset {EXPERIMENT_ID_ENV}"
        ) from exc
    return mark_kind(client, experiment)


def experiment_id(client, name: str) -> str:
    """The id of experiment `name`, created if it does not exist yet, marked a training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return mark_kind(client, experiment)
    try:
        return client.create_experiment(
            name,
            artifact_location=artifact_location(client.tracking_uri, name),
            tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
        )
    except Exception:  # another trial created it between our two calls
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return mark_kind(client, experiment)


def mark_kind(client, experiment) -> str:
    """The experiment's id, its mlflow.experimentKind set to a training experiment's unless the user
    set one: the MLflow 3 UI then opens it on the runs table, not the GenAI overview."""
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


def artifact_location(uri: str, name: str) -> str | None:
    """Where a new experiment of a SQLite store keeps its artifacts: beside the database file
    (<db folder>/mlruns/<name>), not MLflow's default ./mlruns under whatever folder the process
    creating it ran in (a sweep job, a test). None (MLflow's default) for other stores: a
    server has its own artifact root."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or uri[len(prefix) :] in ("", ":memory:"):
        return None
    database = Path(uri[len(prefix) :].split("?", 1)[0])
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    return (Path.cwd() / database).resolve().parent.joinpath("mlruns", folder).as_uri()


def flatten(tree: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as MLflow params: dotted keys, string values (lists as JSON). A mapping
    with a key MLflow refuses in a param name (eval.scorers' `summ*`) is one param, as JSON."""
    if isinstance(tree, dict):
        if prefix and not all(PARAM_KEY.fullmatch(str(key)) for key in tree):
            return {prefix[:-1]: redact(json.dumps(tree))}
        out: dict[str, str] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    # A password in a URL (a study storage, a database) is never a param: its value shows ***.
    return {prefix[:-1]: redact(json.dumps(tree) if isinstance(tree, (list, tuple)) else str(tree))}


def http_defaults(uri: str) -> None:
    """Fail fast on an HTTP tracking server so our own retries decide (a user's setting wins):
    MLflow's defaults retry for minutes inside one call."""
    if uri.startswith(("http://", "https://")):
        for key, value in HTTP_ENV.items():
            os.environ.setdefault(key, value)


def retry_until(call, timeout_s: float, what: str, uri: str):
    """`call()` retried with backoff while the server is unreachable, for up to `timeout_s`."""
    deadline, pause, warned = time.monotonic() + timeout_s, BACKOFF_S[0], False
    while True:
        try:
            return call()
        except Exception as exc:
            if not transient(exc) or time.monotonic() + pause > deadline:
                raise TrackingError(
                    f"tracking.uri {uri}: could not {what} within tracking.outage_timeout_s={timeout_s:g} s: "
                    f"{type(exc).__name__}: {exc}"[:3000]
                ) from exc
            if not warned:
                log.warning("MLflow server %s unreachable (%s); retrying to %s", uri, type(exc).__name__, what)
                warned = True
            time.sleep(pause)
            pause = min(2 * pause, BACKOFF_S[1])


def delete_tags(client, run_id: str, keys: list[str]) -> None:
    """The tags removed; one absent (never set, or removed by another process meanwhile) is no error."""
    from mlflow.exceptions import MlflowException

    for key in keys:
        try:
            client.delete_tag(run_id, key)
        except MlflowException as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
                raise


def find_run(ref: str, uri: str | None, expected: str):
    """(client, run) for a run id given on a command line where `expected` (a folder) was the
    other choice; not found: a UserInputError naming both and the store."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = uri or default_uri()
    client = MlflowClient(tracking_uri=uri)
    try:
        return client, client.get_run(ref)
    except MlflowException as exc:
        raise UserInputError(
            f"{ref}: neither {expected} nor a run in {uri} ({exc.message}); pass --tracking-uri for another store"
        ) from exc


def read_parent(sweep_dir: str | Path) -> dict[str, Any]:
    """What the sweep callback left in the sweep folder: parent run id and swept keys."""
    path = Path(sweep_dir) / PARENT_FILE
    return json.loads(path.read_text()) if path.exists() else {}
