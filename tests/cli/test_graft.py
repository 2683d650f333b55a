"""The ``graft`` command, run as a user runs it (from a fresh directory), in this process."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import torchgraft
from torchgraft.examples import ConvNet
from torchgraft.examples.checkpoints import example_path


def only(paths):
    paths = list(paths)
    assert len(paths) == 1, paths
    return paths[0]


def test_bare_graft_runs_the_default_recipe_end_to_end(graft, tmp_path):
    result = graft()
    assert result.returncode == 0, result.stderr
    model = only(tmp_path.glob("outputs/conv_only/[0-9]*/model.safetensors"))
    got = load_file(model)
    assert torch.equal(got["conv1.weight"], load_file(example_path("convnet"))["conv1.weight"])
    assert "conv1.weight" in result.stdout and "← pretrained:conv1.weight" in result.stdout
    assert "wrote" in result.stderr and "verified against the plan" in result.stderr
    assert (model.parent / "plan.json").exists() and (model.parent / "plan.txt").exists()


def test_dry_run_writes_the_plan_and_no_checkpoint(graft, tmp_path):
    result = graft("recipe=partial_columns", "dry_run=true")
    assert result.returncode == 0, result.stderr
    run_dir = only(tmp_path.glob("outputs/partial_columns/[0-9]*"))
    assert not list(run_dir.glob("*.safetensors")) and not list(tmp_path.rglob("*.safetensors"))
    plan = json.loads((run_dir / "plan.json").read_text())
    fc = next(e for e in plan["entries"] if e["key"] == "fc.weight")
    assert fc["uncovered"] == ["[:, 10:]"] and fc["pieces"][0]["region"] == "[:, :10]"
    assert (run_dir / "plan.txt").read_text() == result.stdout
    # same line format; the key column is wider because the kept LayerNorm folds into norm.{weight,bias}
    assert "fc.weight           [4,20]  f32  [:, :10] ← pretrained:fc.weight[:, :10]; [:, 10:] keep  (rules[0])" in result.stdout
    assert "norm.{weight,bias}  [20]    f32  keep" in result.stdout


def test_overrides_reach_every_recipe_field(graft, tmp_path):
    out = tmp_path / "custom" / "seven.pt"
    result = graft("recipe=conv_only", "target.num_classes=7", f"output.path={out}", "output.dtype=bfloat16")
    assert result.returncode == 0, result.stderr
    got = torch.load(out, weights_only=True)
    assert got["fc3.weight"].shape == (7, 84) and got["fc3.weight"].dtype == torch.bfloat16
    source = load_file(example_path("convnet"))
    assert torch.equal(got["conv1.weight"], source["conv1.weight"].to(torch.bfloat16))
    model = ConvNet(num_classes=7).to(torch.bfloat16)
    model.load_state_dict(got, strict=True)


def test_multirun_runs_one_job_per_recipe(graft, tmp_path):
    result = graft("-m", "recipe=conv_only,partial_columns")
    assert result.returncode == 0, result.stderr
    outputs = sorted(p.parent.name for p in tmp_path.glob("outputs/multirun/*/*/model.safetensors"))
    assert outputs == ["0_conv_only", "1_partial_columns"]


def test_a_recipe_in_the_working_directory_wins_over_the_bundled_ones(graft, tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "conv_only.yaml").write_text(
        "sources: {pretrained: '${example:convnet}'}\n"
        "target: {_target_: torchgraft.examples.ConvNet, num_classes: 3}\n"
        "rules: [{from: pretrained, select: conv1}]\n"
        "keep: [conv2, 'fc*']\n"
    )
    result = graft("recipe=conv_only", "dry_run=true")
    assert result.returncode == 0, result.stderr
    assert "fc3.weight    [3,84]" in result.stdout


def test_unknown_recipe_lists_the_available_ones(graft):
    result = graft("recipe=conv_onyl")
    assert result.returncode == 1
    assert "Could not find 'recipe/conv_onyl'" in result.stderr
    assert "conv_only" in result.stderr and "Traceback" not in result.stderr


def test_user_error_is_one_line_with_exit_1_and_no_traceback(graft, tmp_path):
    result = graft("recipe=conv_only", "+rules.0.selct=conv1")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: rules[0].selct: unknown field (did you mean 'select'?)"
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("plan.json"))


def test_hydra_full_error_shows_the_traceback(graft):
    result = graft("recipe=conv_only", "+rules.0.selct=conv1", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RecipeError" in result.stderr


def test_existing_output_is_refused_and_left_untouched(graft, tmp_path):
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"precious")
    result = graft("recipe=conv_only", f"output.path={out}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: output.path: {out}: already exists (set output.overwrite=true to replace it)"
    )
    assert out.read_bytes() == b"precious"
    assert not list(tmp_path.rglob("plan.json"))
    assert graft("recipe=conv_only", f"output.path={out}", "output.overwrite=true").returncode == 0
    assert "conv1.weight" in load_file(out)


@pytest.mark.slow
def test_graft_inspect_lists_a_checkpoint_and_a_class(tmp_path):
    from conftest import run_cli

    result = run_cli("graft-inspect", example_path("lightning"), "--key", "state_dict", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1] == "└── model  62,006"
    assert "conv1" in result.stdout and "[6,3,5,5]  f32" in result.stdout
    result = run_cli("graft-inspect", "torchgraft.examples.ConvNet", "num_classes=5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "├── conv1  Conv2d  456" in result.stdout
    assert "fc3  Linear  425" in result.stdout


def test_a_run_switch_that_is_not_true_or_false_is_refused(graft, tmp_path):
    result = graft("dry_run=nope")
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: dry_run: must be true or false (got 'nope')"]
    assert not list(tmp_path.rglob("*.safetensors")) and not list(tmp_path.rglob("plan.json"))
    result = graft("apply=reviewed.plan.json", "dry_run=nope")  # apply reads the same typed switches
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["error: dry_run: must be true or false (got 'nope')"]


def test_debug_shows_the_traceback_of_a_user_error(graft):
    result = graft("+rules.0.selct=conv1", "debug=true")
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.splitlines()[-1] == "error: rules[0].selct: unknown field (did you mean 'select'?)"


def test_a_bug_exits_2_with_its_traceback_and_says_so(graft, monkeypatch):
    import torchgraft.cli.graft as cli

    def broken(*args, **kwargs):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "make_plan", broken)
    result = graft("dry_run=true")
    assert result.returncode == 2
    assert "Traceback (most recent call last):" in result.stderr and "ZeroDivisionError: boom" in result.stderr
    assert result.stderr.splitlines()[-1] == (
        "internal error: this is a bug in torchgraft; please report it with the traceback above"
    )


def run_dirs(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.glob("outputs/*/*") if p.name != "latest")


def test_a_failed_run_and_a_check_leave_no_run_directory(graft, tmp_path):
    result = graft("+rules.0.selct=conv1")
    assert result.returncode == 1
    assert not (tmp_path / "outputs").exists()
    made = graft("dry_run=true", "plan_dir=plans")
    assert made.returncode == 0, made.stderr
    before = run_dirs(tmp_path)
    checked = graft("check=plans/conv_only.plan.json")
    assert checked.returncode == 0, checked.stderr
    assert run_dirs(tmp_path) == before
    assert graft("+rules.0.selct=conv1", "debug=true").returncode == 1  # debug keeps it, to look into
    (kept,) = set(run_dirs(tmp_path)) - set(before)
    assert (tmp_path / kept / "graft.log").exists()


@pytest.mark.parametrize("where", ["parent-is-a-file", "output-is-a-directory"])
def test_an_output_that_cannot_be_written_is_one_line_and_leaves_no_run_directory(graft, tmp_path, where):
    (tmp_path / "taken").write_text("")
    (tmp_path / "m.safetensors").mkdir()
    out = {"parent-is-a-file": "taken/m.safetensors", "output-is-a-directory": "m.safetensors"}[where]
    result = graft(f"output.path={out}", "output.overwrite=true")
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith("error: output.path: ") and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists()  # no plan files of a run that wrote nothing


def test_runs_in_the_same_second_get_a_directory_each_and_latest_points_at_the_newest(graft, tmp_path):
    same = "hydra.run.dir=${fresh_dir:outputs/conv_only/2026-01-02_03-04-05}"
    for _ in range(2):
        result = graft(same, "dry_run=true")
        assert result.returncode == 0, result.stderr
    assert run_dirs(tmp_path) == ["outputs/conv_only/2026-01-02_03-04-05", "outputs/conv_only/2026-01-02_03-04-05_2"]
    latest = tmp_path / "outputs" / "conv_only" / "latest"
    assert os.readlink(latest) == "2026-01-02_03-04-05_2" and (latest / "plan.json").exists()
    assert graft("dry_run=true").returncode == 0  # the default name: today's date, made unique the same way
    assert os.readlink(latest) == run_dirs(tmp_path)[-1].split("/")[-1]


def test_version_names_torchgraft_then_hydra(graft):
    import hydra

    result = graft("--version")
    assert result.returncode == 0
    assert result.stdout == f"torchgraft {torchgraft.__version__} (Hydra {hydra.__version__})\n"


def test_help_lists_switches_fields_exit_codes_and_the_other_commands(graft):
    from torchgraft.recipe.parse import RECIPE_FIELDS
    from torchgraft.recipe.run_options import RUN_FIELDS

    result = graft("--help")
    assert result.returncode == 0
    text = result.stdout
    assert all(f"\n  {name}=" in text for name in RUN_FIELDS), text
    fields = next(line for line in text.splitlines() if line.startswith("Recipe fields (top level): "))
    assert sorted(fields.split(": ", 1)[1].split(", ")) == sorted(RECIPE_FIELDS)
    assert "Exit codes: 0 done; 1 your input needs a fix" in text and "2 a bug in torchgraft" in text
    assert "\n  graft-inspect PATH_OR_CLASS" in text and "\n  graft-diff OLD.plan.json NEW.plan.json" in text


@pytest.mark.slow
def test_python_m_torchgraft_is_graft(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "torchgraft", "dry_run=true"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env={k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"})
    assert result.returncode == 0, result.stderr
    assert "conv1.weight" in result.stdout and (tmp_path / "outputs" / "conv_only" / "latest" / "plan.json").exists()


def test_the_config_is_composed_once_per_run(graft, tmp_path, monkeypatch):
    from hydra._internal.hydra import Hydra

    composed = []
    compose = Hydra.compose_config
    monkeypatch.setattr(Hydra, "compose_config", lambda self, *a, **k: composed.append(1) or compose(self, *a, **k))
    assert graft("dry_run=true").returncode == 0
    assert len(composed) == 1  # Hydra alone composes twice: once only to learn the run mode
    assert graft("hydra.mode=MULTIRUN", "dry_run=true").returncode == 0  # the mode as an override still counts
    assert list(tmp_path.glob("outputs/multirun/*/0_conv_only/plan.json"))
