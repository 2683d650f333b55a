"""Shared fixtures: example checkpoints in a private folder, and the installed ``graft`` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True, scope="session")
def examples_dir(tmp_path_factory) -> Path:
    """Bundled recipes build their example checkpoints here, not in the user's cache."""
    path = tmp_path_factory.mktemp("examples")
    os.environ["TORCHGRAFT_EXAMPLES_DIR"] = str(path)
    return path


def run_cli(command: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run an installed console script (``graft``, ``graft-inspect``) as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if env and "HYDRA_FULL_ERROR" in env:
        full_env["HYDRA_FULL_ERROR"] = env["HYDRA_FULL_ERROR"]
    return subprocess.run(
        [str(BIN / command), *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300
    )


@pytest.fixture
def graft(tmp_path):
    """``graft(*overrides)`` runs the CLI in a fresh working directory (``tmp_path``)."""

    def run(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_cli("graft", *args, cwd=cwd or tmp_path, env=env)

    return run


def graft_main(monkeypatch, *argv: str) -> int:
    """``graft ARGV`` in this process (no torch import to pay again); its exit code."""
    from torchgraft.cli import graft as graft_cli

    monkeypatch.setattr(sys, "argv", ["graft", *argv])
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)  # main() sets it for Hydra; a user's would mean tracebacks
    try:
        graft_cli.main()
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0
