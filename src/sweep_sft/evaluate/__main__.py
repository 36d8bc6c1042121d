"""`python -m sweep_sft.evaluate TARGET [key=value ...]`: evaluate a trained model again."""

from sweep_sft.evaluate.final import main

if __name__ == "__main__":
    raise SystemExit(main())
