"""The graft-check pre-commit hook, run by pre-commit itself (try-repo) in a project repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BIN, run_cli
from torchgraft.examples.checkpoints import example_path
from torchgraft.recipe.source import bundled_recipes

pytestmark = pytest.mark.slow  # subprocesses: run by `pytest -m slow` (CI runs both tiers)

ROOT = Path(__file__).resolve().parents[2]
PRE_COMMIT = BIN / "pre-commit"
GIT = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env={**os.environ, **GIT})


def try_repo(project: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PRE_COMMIT_HOME": str(tmp_path / "pre-commit-home"), **GIT}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([str(PRE_COMMIT), "try-repo", str(ROOT), "graft-check", "--all-files"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(not PRE_COMMIT.exists() or shutil.which("git") is None, reason="needs pre-commit (the test extra) and git")
def test_pre_commit_passes_an_up_to_date_plan_and_fails_a_stale_one(tmp_path):
    project = tmp_path / "project"
    (project / "recipes").mkdir(parents=True)
    shutil.copyfile(example_path("convnet"), project / "cnn.safetensors")
    recipe = project / "recipes" / "ft.yaml"
    recipe.write_text((bundled_recipes() / "conv_only.yaml").read_text().replace("${example:convnet}", "cnn.safetensors"))
    result = run_cli("graft", "recipe=ft", "dry_run=true", "plan_dir=plans", cwd=project)
    assert result.returncode == 0, result.stderr
    shutil.rmtree(project / "outputs")
    git(project, "init", "-q")
    git(project, "add", ".")
    git(project, "commit", "-q", "-m", "recipe and its plan")

    passed = try_repo(project, tmp_path)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "graft-check (committed plans are up to date)" in passed.stdout

    recipe.write_text(recipe.read_text().replace("num_classes: 5", "num_classes: 7"))  # the plan is now stale
    failed = try_repo(project, tmp_path)
    assert failed.returncode == 1
    assert "~ target.num_classes: 5 -> 7" in failed.stdout
    assert "error: graft-check: 1 of 1 plans out of date: plans/ft.plan.json" in failed.stdout


def test_graft_check_in_process(tmp_path, monkeypatch, capsys):
    from torchgraft.cli import check_plans

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        check_plans.main(["plans/nope.json"])
    assert capsys.readouterr().err.splitlines()[0] == (
        "error: graft-check: plans/nope.json: a committed plan is named RECIPE.plan.json (as plan_dir writes it)")
    assert sys.argv[0] != "graft"
