"""optuna-dashboard on a sweep's study storage (`make optuna-dashboard`):
`python -m sweep_sft.sweep.dashboard [--storage URL | SWEEP_FOLDER] [--port P]`.

The storage is the given URL, else the one the sweep folder's optuna_result.json recorded
(hydra/sweeper=optuna5 writes it there), else the folder's optuna.journal; with neither, the
newest sweep folder under multirun/. The result file is read as JSON data: only its `storage`
string is used, opened as a journal file or a database URL, never run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sweep_sft.errors import ConfigError
from sweep_sft.names import OPTUNA_FILE, OPTUNA_JOURNAL

MULTIRUN = Path("multirun")  # Hydra's default multirun root, searched when nothing is given


def recorded_storage(sweep_dir: Path) -> str | None:
    """The storage a sweep folder recorded (optuna_result.json's `storage`), else its journal."""
    result = sweep_dir / OPTUNA_FILE
    if result.is_file():
        try:
            storage = json.loads(result.read_text()).get("storage")
        except (json.JSONDecodeError, AttributeError) as exc:
            raise ConfigError(f"SWEEP={sweep_dir}: {OPTUNA_FILE} is not a JSON object: {exc}") from exc
        if isinstance(storage, str) and storage:
            return storage
    journal = sweep_dir / OPTUNA_JOURNAL
    return str(journal.resolve()) if journal.is_file() else None


def newest_sweep(root: Path = MULTIRUN) -> Path | None:
    """The most recently written Optuna sweep folder under `root` (any depth: Hydra nests dates)."""
    marks = [*root.rglob(OPTUNA_FILE), *root.rglob(OPTUNA_JOURNAL)] if root.is_dir() else []
    return max(marks, key=lambda p: p.stat().st_mtime).parent if marks else None


def resolve_storage(storage: str | None, sweep: str | None, root: Path = MULTIRUN) -> str:
    """The storage URL to show: `storage` as given, else the sweep folder's, else the newest
    sweep's under `root`; a clear error naming what to set when there is none."""
    if storage:
        return storage
    if sweep:
        sweep_dir = Path(sweep)
        if not sweep_dir.is_dir():
            raise ConfigError(f"SWEEP={sweep}: no such sweep folder")
        found = recorded_storage(sweep_dir)
        if found is None:
            raise ConfigError(
                f"SWEEP={sweep}: no {OPTUNA_FILE} with a storage and no {OPTUNA_JOURNAL} in it (is it an "
                "hydra/sweeper=optuna5 sweep?); pass STORAGE=<journal file or database URL>"
            )
        return found
    newest = newest_sweep(root)
    if newest is None:
        raise ConfigError(
            f"no study storage: set STORAGE=<journal file or database URL> (--storage) or SWEEP=<sweep folder>; "
            f"no optuna5 sweep folder under {root}/"
        )
    return resolve_storage(None, str(newest), root)


def open_dashboard_storage(url: str):
    """A journal file (an existing *.journal path) as JournalStorage, else a database URL."""
    import optuna
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if url.endswith(".journal") and "://" not in url:
        if not Path(url).is_file():
            raise ConfigError(f"STORAGE={url}: no such journal file")
        return JournalStorage(JournalFileBackend(url))
    return optuna.storages.RDBStorage(url)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="optuna-dashboard on a sweep's Optuna study storage")
    parser.add_argument(
        "sweep", nargs="?", help="a hydra/sweeper=optuna5 sweep folder (default: newest under multirun/)"
    )
    parser.add_argument(
        "--storage", help="a journal file (*.journal) or a database URL (sqlite:///..., postgresql://...)"
    )
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)
    try:
        url = resolve_storage(args.storage, args.sweep)
        storage = open_dashboard_storage(url)
    except ConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    import optuna_dashboard

    print(f"optuna-dashboard on {url}: http://127.0.0.1:{args.port}", flush=True)
    optuna_dashboard.run_server(storage, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
