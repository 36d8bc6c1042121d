"""`python -m sweep_sft.report SWEEP`: write a sweep's report as one self-contained HTML file."""

from sweep_sft.report.html import main

if __name__ == "__main__":
    raise SystemExit(main())
