"""Sweeps on Hydra's launcher plugins: jobs in other processes, one summary table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses: run by `pytest -m slow` (CI runs both tiers)

GRAFT = str(Path(sys.executable).parent / "graft")


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_a_sweep_on_a_launcher_runs_every_job_and_prints_the_summary(tmp_path, launcher):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([GRAFT, "-m", f"hydra/launcher={launcher}", "recipe=conv_only,sequential_prefix", "dry_run=true",
                           "hydra.sweep.dir=sweep"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sweep sweep: 2 jobs, 2 ok, 0 failed" in done.stderr
    jobs = json.loads((tmp_path / "sweep" / "summary.json").read_text())["jobs"]
    assert [(j["recipe"], j["status"], j["mode"]) for j in jobs] == [("conv_only", "ok", "dry_run"),
                                                                        ("sequential_prefix", "ok", "dry_run")]
    for job in ("0_conv_only", "1_sequential_prefix"):
        assert (tmp_path / "sweep" / job / "plan.json").is_file()


def test_a_job_that_fails_in_a_launcher_process_fails_the_sweep(tmp_path):
    """The jobs run in worker processes: Hydra hands their failure to graft."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run([GRAFT, "-m", "hydra/launcher=joblib", "recipe=conv_only", "dry_run=true,nope",
                           "hydra.sweep.dir=sweep"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert done.stderr.splitlines()[-1] == "error: dry_run: must be true or false (got 'nope')"
