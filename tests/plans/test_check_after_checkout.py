"""A committed plan passes check= after a fresh checkout (new mtimes, same files); apply
stays strict about the mtime in the default fast mode."""

from __future__ import annotations

import os
import shutil

from conftest import graft_main
from torchgraft.examples.checkpoints import example_path
from torchgraft.recipe.source import bundled_recipes


def test_an_mtime_only_change_passes_check_with_a_note_and_fails_apply(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(example_path("convnet"), tmp_path / "cnn.safetensors")
    (tmp_path / "recipes").mkdir()
    recipe = (bundled_recipes() / "conv_only.yaml").read_text().replace("${example:convnet}", "cnn.safetensors")
    (tmp_path / "recipes" / "ft.yaml").write_text(recipe)
    assert graft_main(monkeypatch, "recipe=ft", "dry_run=true", "plan_dir=plans") == 0
    stat = (tmp_path / "cnn.safetensors").stat()
    os.utime(tmp_path / "cnn.safetensors", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # as a checkout leaves it
    capsys.readouterr()
    assert graft_main(monkeypatch, "recipe=ft", "check=plans/ft.plan.json") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("OK: plans/ft.plan.json is up to date (plan ")
    assert out[1:] == ["note: sources.pretrained: only its modification time differs from the plan's (size and header as pinned); "
                       "check does not compare it, apply does"]
    assert graft_main(monkeypatch, "apply=plans/ft.plan.json", "output.path=o.safetensors") == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: sources.pretrained: cnn.safetensors changed since the plan was made (mtime_ns differ)")
