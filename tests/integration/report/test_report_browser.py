"""A real sweep's report, opened in headless Chromium (Debian's `chromium`, `make browser`): it is
on disk and on the parent run, every plot decodes, every section shows, and it renders to a
screenshot that is not blank. Chromium gets a file:// URL and nothing to fetch."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from helpers import run_cli
from sweep_sft.report.html import SECTIONS

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Fail (not skip): a CI run without the browser must not pass silently."""
    path = shutil.which("chromium")
    if path is None:
        pytest.fail("chromium is not installed; install it with `make browser` (Debian's chromium package)")
    return path


def _chromium(chromium: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "chromium-profile"
    cmd = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_sweep_report_opens_in_chromium_with_its_plots(tmp_path, tiny_overrides, chromium):
    overrides = [o for o in tiny_overrides if not o.startswith(("tracking.", "output_dir="))]
    sweep_dir = tmp_path / "sweep"
    # Two trials that train and one that diverges (a bad lr is refused before any job runs, so the
    # failure must come from training): the failed table has a row.
    args = ["-m", "lr=1e-4,3e-3,1e30", f"hydra.sweep.dir={sweep_dir}", *overrides]
    proc = run_cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = sweep_dir / "report.html"
    assert report.exists(), proc.stderr[-3000:]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("sweep-sft").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("sweep_sft.kind") == "sweep")
    assert "report.html" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.info.status == "FINISHED"

    html = report.read_text()
    assert not re.search(r"https?://", html)
    assert "2 complete, 0 pruned, 1 failed" in html and "training diverged at step" in html
    n_images = html.count("<img ")
    assert n_images == 5  # train and val loss, channel losses, objective vs lr, learn vs forget

    dom = _chromium(chromium, tmp_path, "--dump-dom", report.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body and f'data-images="{n_images}/{n_images}"' in body.group(0), (body, dom.stderr[-2000:])
    for _, title in SECTIONS:
        if title != "Sandwich search":
            assert f"<h2>{title}</h2>" in dom.stdout

    shot = tmp_path / "shot.png"
    done = _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", report.as_uri())
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels[..., :3].std() > 0.05  # plots and text, not a blank page
