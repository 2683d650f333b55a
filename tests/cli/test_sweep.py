"""``graft -m``: one summary table over every job, also when a job fails."""

from __future__ import annotations

import json
from pathlib import Path


def test_a_failing_job_does_not_hide_the_others(graft, tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "broken.yaml").write_text(
        "sources: {pretrained: '${example:convnet}'}\n"
        "target: {_target_: torchgraft.examples.ConvNet, num_classes: 3}\n"
        "rules: [{from: pretrained, select: nope}]\n"
        "keep: ['fc*']\n"
    )
    result = graft("-m", "recipe=conv_only,broken,partial_columns", "policy.unused=ignore")
    assert result.returncode == 1
    (sweep_dir,) = tmp_path.glob("outputs/multirun/*")
    jobs = json.loads((sweep_dir / "summary.json").read_text())["jobs"]
    assert [(j["job"], j["recipe"], j["status"], j["mode"]) for j in jobs] == [
        (0, "conv_only", "ok", "run"), (1, "broken", "failed", "run"), (2, "partial_columns", "ok", "run")
    ]
    assert jobs[1]["error"] == "rules[0].select[0]: 'nope' matches no tensor of source 'pretrained'"
    assert [(j["assigned"], j["kept"], j["unused"]) for j in jobs] == [(4, 6, 6), (None, None, None), (2, 2, 2)]
    assert jobs[0]["bytes_written"] == (sweep_dir / "0_conv_only" / "model.safetensors").stat().st_size
    assert jobs[0]["overrides"] == ["policy.unused=ignore"]

    text = (sweep_dir / "summary.txt").read_text()
    lines = text.splitlines()
    shown = sweep_dir.relative_to(tmp_path)
    assert lines[0] == f"sweep {shown}: 3 jobs, 2 ok, 1 failed"
    assert lines[2].split() == ["job", "recipe", "overrides", "mode", "status", "assigned", "kept", "unused", "written", "output"]
    assert lines[3].split()[:8] == ["0", "conv_only", "policy.unused=ignore", "run", "ok", "4", "6", "6"]
    assert lines[3].endswith(f"{shown}/0_conv_only/model.safetensors")
    assert lines[4].split() == ["1", "broken", "policy.unused=ignore", "run", "failed", "-", "-", "-", "-", "-"]
    assert lines[5].split()[:5] == ["2", "partial_columns", "policy.unused=ignore", "run", "ok"]
    assert lines[6:] == ["", "errors:", "  job 1 (broken): rules[0].select[0]: 'nope' matches no tensor of source 'pretrained'"]
    assert text in result.stderr  # graft shows the table at the end of the sweep


def test_jobs_of_one_recipe_do_not_overwrite_each_others_plan(graft, tmp_path):
    """Two jobs of one recipe would write the same plan_dir/NAME.plan.json: the second
    refuses, and the first job's plan stays as it wrote it."""
    result = graft("-m", "recipe=conv_only", "output.dtype=float16,bfloat16", "dry_run=true", "plan_dir=plans")
    assert result.returncode == 1
    assert ("job 1 (conv_only): plan_dir: plans/conv_only.plan.json was written by another job of this sweep; "
            "jobs that share a recipe need a plan_dir each, e.g. plan_dir='plans/${hydra:job.num}'") in result.stderr
    plan = json.loads((tmp_path / "plans" / "conv_only.plan.json").read_text())
    assert plan["recipe"]["output"]["dtype"] == "float16"

    again = graft("-m", "recipe=conv_only", "output.dtype=float16,bfloat16", "dry_run=true",
                  "plan_dir=plans/${hydra:job.num}")
    assert again.returncode == 0, again.stderr
    dtypes = [json.loads((tmp_path / "plans" / n / "conv_only.plan.json").read_text())["recipe"]["output"]["dtype"]
              for n in ("0", "1")]
    assert dtypes == ["float16", "bfloat16"]
    rerun = graft("-m", "recipe=conv_only", "dry_run=true", "plan_dir=plans")  # a later sweep may replace it
    assert rerun.returncode == 0, rerun.stderr


def test_a_sweep_of_no_job_is_an_error(graft, tmp_path):
    result = graft("-m", "sources.pretrained=glob(checkpoints/run*.pt)", "dry_run=true")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: sweep: 0 jobs to run: sources.pretrained=glob(checkpoints/run*.pt) matched nothing (glob(...) matches "
        "the names of recipes, recipe='glob(*)', not files: list the values instead, e.g. sources.pretrained=a.pt,b.pt)"
    )


def test_a_fixed_output_path_shared_by_the_jobs_is_refused_before_the_first(graft, tmp_path):
    result = graft("-m", "recipe=conv_only", "output.dtype=float16,bfloat16", "output.path=out/model.safetensors")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: output.path: every job of this sweep would write out/model.safetensors; jobs need an output.path each, "
        "e.g. output.path='out/${hydra:job.num}/model.safetensors'"
    )
    assert not (tmp_path / "out").exists() and not (tmp_path / "outputs").exists()
    fixed = graft("-m", "recipe=conv_only", "output.dtype=float16,bfloat16", "output.path=out/${hydra:job.num}/model.safetensors")
    assert fixed.returncode == 0, fixed.stderr
    assert sorted(p.parent.name for p in tmp_path.glob("out/*/model.safetensors")) == ["0", "1"]


def test_glob_in_a_project_sweeps_its_own_recipes_and_the_summary_shows_overrides_as_typed(graft, tmp_path):
    (tmp_path / "recipes").mkdir()
    for name in ("mine", "yours"):
        (tmp_path / "recipes" / f"{name}.yaml").write_text(
            "sources: {pretrained: '${example:convnet}'}\n"
            "target: {_target_: torchgraft.examples.ConvNet, num_classes: 3}\n"
            "rules: [{from: pretrained, select: conv1}]\n"
            "keep: [conv2, 'fc*']\n"
        )
    result = graft("-m", "recipe=glob(*)", "dry_run=true", "policy.unused=ignore", "plan_dir=plans/${hydra:job.num}")
    assert result.returncode == 0, result.stderr
    (sweep_dir,) = tmp_path.glob("outputs/multirun/*")
    jobs = json.loads((sweep_dir / "summary.json").read_text())["jobs"]
    assert [j["recipe"] for j in jobs] == ["mine", "yours"]
    assert jobs[0]["overrides"] == ["dry_run=true", "policy.unused=ignore", "plan_dir=plans/${hydra:job.num}"]
    assert graft("recipe=partial_columns", "dry_run=true").returncode == 0  # the bundled ones still load by name


def test_a_user_error_survives_the_trip_from_a_launcher_process():
    import pickle

    from torchgraft.core.errors import RecipeError

    back = pickle.loads(pickle.dumps(RecipeError("dry_run", "must be true or false (got 'nope')")))
    assert type(back) is RecipeError and (back.field, str(back)) == ("dry_run", "dry_run: must be true or false (got 'nope')")


def test_a_literal_output_path_in_the_recipe_shared_by_a_sweep_is_refused_before_it_writes(graft, tmp_path):
    (tmp_path / "recipes").mkdir()
    bundled = (Path(__file__).parents[2] / "src/torchgraft/recipes/conv_only.yaml").read_text()
    (tmp_path / "recipes" / "fixed.yaml").write_text(bundled + "output:\n  path: out/model.safetensors\n")
    result = graft("-m", "recipe=fixed", "output.dtype=float16,bfloat16")
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "error: output.path: every job of this sweep would write out/model.safetensors; jobs need an output.path each, "
        "e.g. output.path='out/${hydra:job.num}/model.safetensors'"
    )
    assert not (tmp_path / "out").exists()
    assert graft("-m", "recipe=fixed", "output.dtype=float16,bfloat16", "dry_run=true").returncode == 0  # writes no checkpoint
