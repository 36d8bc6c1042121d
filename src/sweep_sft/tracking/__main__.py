"""`python -m sweep_sft.tracking FILE`: deliver a run's mlflow_undelivered.json to MLflow later."""

from __future__ import annotations

import argparse

from sweep_sft.tracking.runs import replay


def main(argv: list[str] | None = None) -> int:
    """Deliver the records one trial (or sweep) could not send while MLflow was away."""
    parser = argparse.ArgumentParser(
        prog="python -m sweep_sft.tracking", description="Deliver a run's mlflow_undelivered.json to MLflow."
    )
    parser.add_argument("file", help="mlflow_undelivered.json from a trial (or sweep) folder")
    parser.add_argument("--uri", help="tracking URI, if not the one in the file")
    args = parser.parse_args(argv)
    sent = replay(args.file, args.uri)
    print(f"delivered {sent} metric points and the other records of {args.file}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
