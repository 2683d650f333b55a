"""What the terminal shows when a run is interrupted or its environment fails: one line."""

from __future__ import annotations

import errno
import signal
import tempfile
import warnings

import pytest

from torchgraft.cli import diff, exits, graft
from torchgraft.core.errors import GraftError


def run_main(monkeypatch, capsys, job) -> tuple[int, list[str]]:
    monkeypatch.setattr(graft, "run", lambda cfg, options, run_dir, world: job())
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        graft.main([f"hydra.run.dir={tempfile.mkdtemp()}/run"])
    return info.value.code, capsys.readouterr().err.splitlines()


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt(), 130, "error: interrupted (SIGINT); no output was written"),
    (exits.Interrupted(signal.SIGTERM), 143, "error: interrupted (SIGTERM); no output was written"),
    (exits.Interrupted(signal.SIGHUP), 129, "error: interrupted (SIGHUP); no output was written"),
    (OSError(errno.ENOSPC, "No space left on device", "/data/out.safetensors"), 1,
     "error: /data/out.safetensors: No space left on device (ENOSPC)"),
    (OSError(errno.EIO, "Input/output error", "/data/src.safetensors"), 1,
     "error: /data/src.safetensors: Input/output error (EIO)"),
])
def test_an_interrupt_or_environment_failure_is_one_line(monkeypatch, capsys, raised, code, line):
    def job():
        raise raised

    assert run_main(monkeypatch, capsys, job) == (code, [line])


def test_sigterm_and_sighup_raise_where_the_run_is_so_cleanup_runs(monkeypatch, capsys):
    def job():
        signal.raise_signal(signal.SIGTERM)

    try:
        assert run_main(monkeypatch, capsys, job) == (143, ["error: interrupted (SIGTERM); no output was written"])
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_library_warning_is_one_line(monkeypatch, capsys):
    def job():
        warnings.warn("TypedStorage is deprecated.\nIt will be removed", UserWarning, stacklevel=1)
        raise GraftError("sources.s", "bad")

    saved = warnings.showwarning
    try:
        assert run_main(monkeypatch, capsys, job) == (1, ["warning: TypedStorage is deprecated.",
                                                          "error: sources.s: bad"])
    finally:
        warnings.showwarning = saved


def test_graft_diff_on_malformed_json_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "a.plan.json"
    bad.write_text("[" * 100000)
    assert diff.main([str(bad), str(bad)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {bad}: not a torchgraft plan (JSON nested too deeply)"]


@pytest.mark.parametrize("key", ["..{}.0.", ".{}.0.", ".".join(["a"] * 500)], ids=["braces", "leading-dot", "deep"])
def test_graft_inspect_shows_odd_keys(tmp_path, capsys, key):
    import torch
    from safetensors.torch import save_file

    from torchgraft.cli import inspect

    path = tmp_path / "odd.safetensors"
    save_file({key: torch.zeros(1), "ok.weight": torch.zeros(2)}, str(path))
    inspect.main([str(path)])
    out = capsys.readouterr().out
    assert out.startswith(f"{path} (safetensors)  2 tensors, 3 elements, 12 B\n") and "ok" in out
