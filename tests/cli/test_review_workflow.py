"""The review workflow, run as a user runs it: commit a plan (dry run + plan_dir), gate
it in CI (check=PLAN), run exactly it (apply=PLAN), and the refusals when the plan,
a source or the target changed since review."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, safe_open, save_file

from conftest import graft_in_process, run_cli
from torchgraft.core.errors import DriftError
from torchgraft.execution.sources import open_plan_sources
from torchgraft.plans.files import read_plan

MODEL = '''from torch import nn


class Net(nn.Module):
    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.stem = nn.Linear(8, 16)
        self.blocks = nn.ModuleList(nn.Linear(16, 16) for _ in range(4))
        self.head = nn.Linear(16, num_classes)
'''

RECIPE = """# graft recipe=ft
sources:
  pretrained: ckpt/encoder.safetensors
target:
  _target_: mymodels.Net
  num_classes: 5
rules:
  - from: pretrained
    select: [encoder]
    rename:
      encoder.layers: blocks
      encoder.stem: stem
keep: [head]
"""

PLAN_TEXT = """\
target  mymodels.Net(num_classes=5)  seed 0
source  pretrained = ckpt/encoder.safetensors  (safetensors, 6.4 KiB): 10 tensors read (4.8 KiB), 2 unused (680 B)

stem.weight           [16,8]   f32  ← pretrained:encoder.stem.weight  (rules[0])
stem.bias             [16]     f32  ← pretrained:encoder.stem.bias  (rules[0])
blocks.{0..3}.weight  [16,16]  f32  ← pretrained:encoder.layers.{0..3}.weight  (rules[0])
blocks.{0..3}.bias    [16]     f32  ← pretrained:encoder.layers.{0..3}.bias  (rules[0])
head.weight           [5,16]   f32  keep
head.bias             [5]      f32  keep

unused source tensors (2, 680 B):
  pretrained:classifier.{bias,weight}

12 target tensors (5.1 KiB): 10 assigned (4.8 KiB), 2 kept (340 B); 2 source tensors unused (680 B)
"""


def encoder_tensors(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tensors = {"encoder.stem.weight": torch.randn(16, 8, generator=g), "encoder.stem.bias": torch.randn(16, generator=g)}
    for i in range(4):
        tensors[f"encoder.layers.{i}.weight"] = torch.randn(16, 16, generator=g)
        tensors[f"encoder.layers.{i}.bias"] = torch.randn(16, generator=g)
    tensors["classifier.weight"] = torch.randn(10, 16, generator=g)
    tensors["classifier.bias"] = torch.randn(10, generator=g)
    return tensors


def graft_in(project: Path, *args: str, env: dict | None = None):
    """``graft`` in ``project``, with its model module importable (in this process)."""
    return graft_in_process(*args, cwd=project, env={"PYTHONPATH": str(project), **(env or {})})


@pytest.fixture(scope="module")
def committed(tmp_path_factory) -> Path:
    """A project with a recipe, a source checkpoint, a model module and the plan an
    engineer committed: ``graft recipe=ft dry_run=true plan_dir=plans``."""
    root = tmp_path_factory.mktemp("project")
    (root / "recipes").mkdir()
    (root / "recipes" / "ft.yaml").write_text(RECIPE)
    (root / "mymodels.py").write_text(MODEL)
    (root / "ckpt").mkdir()
    save_file(encoder_tensors(), str(root / "ckpt" / "encoder.safetensors"))
    result = graft_in(root, "recipe=ft", "dry_run=true", "plan_dir=plans")
    assert result.returncode == 0, result.stderr
    return root


@pytest.fixture
def project(committed, tmp_path) -> Path:
    """A private copy of the committed project (mtimes preserved, so the plan still holds)."""
    copy = tmp_path / "project"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    return copy


def sha(path: Path) -> str:
    return json.loads(path.read_text())["sha256"]


def no_checkpoints(root: Path) -> bool:
    return not [p for p in root.rglob("*.safetensors") if p.parent.name != "ckpt"]


def test_the_committed_plan_is_stable_text(committed):
    text = (committed / "plans" / "ft.plan.txt").read_text()
    plan_sha = sha(committed / "plans" / "ft.plan.json")
    assert text == f"# torchgraft plan {plan_sha[:12]}  (torchgraft 0.1.0)\n" + PLAN_TEXT
    for name in ("ft.plan.json", "ft.plan.txt", "ft.plan.md"):
        body = (committed / "plans" / name).read_text()
        assert str(committed) not in body and "outputs" not in body and "\x1b[" not in body
    md = (committed / "plans" / "ft.plan.md").read_text()
    assert "<details open><summary>Transfer: 12 target tensors in 6 lines</summary>" in md


@pytest.mark.slow
def test_plans_are_byte_identical_across_runs_and_hash_seeds(project):
    # A process of its own: the hash seed is fixed at start-up (this one's is random).
    result = run_cli("graft", "recipe=ft", "dry_run=true", "plan_dir=again", cwd=project,
                     env={"PYTHONPATH": str(project), "PYTHONHASHSEED": "4242"})
    assert result.returncode == 0, result.stderr
    for suffix in (".plan.json", ".plan.txt", ".plan.md"):  # the committed plan was made in the test process
        assert (project / "again" / f"ft{suffix}").read_bytes() == (project / "plans" / f"ft{suffix}").read_bytes()


def test_check_passes_on_an_unchanged_setup(project):
    result = graft_in(project, "recipe=ft", "check=plans/ft.plan.json")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK: plans/ft.plan.json is up to date (plan {sha(project / 'plans' / 'ft.plan.json')[:12]})\n"


def test_check_fails_with_a_diff_after_a_recipe_change(project):
    recipe = project / "recipes" / "ft.yaml"
    recipe.write_text(recipe.read_text().replace("keep: [head]", "keep: [head, 'blocks.3']").replace("select: [encoder]", "select: [encoder]\n    exclude: ['encoder.layers.3']"))
    result = graft_in(project, "recipe=ft", "check=plans/ft.plan.json")
    assert result.returncode == 1
    old = sha(project / "plans" / "ft.plan.json")[:12]
    assert re.sub(r"now  \(plan [0-9a-f]{12}\)", "now  (plan NEW)", result.stdout) == f"""\
--- plans/ft.plan.json  (plan {old})
+++ recipe=ft now  (plan NEW)
recipe:
  ~ keep: ["head"] -> ["head", "blocks.3"]
  + rules[0].exclude: ["encoder.layers.3"]
entries:
  ~ blocks.3.weight: ← pretrained:encoder.layers.3.weight (rules[0]) -> keep
  ~ blocks.3.bias: ← pretrained:encoder.layers.3.bias (rules[0]) -> keep
unused source tensors:
  + pretrained:encoder.layers.3.{{bias,weight}}
"""
    assert result.stderr.strip().splitlines()[-1] == (
        "error: check: plans/ft.plan.json is out of date (differences above); "
        "if they are intended, re-plan and commit: graft recipe=ft dry_run=true plan_dir=plans"
    )


def test_check_and_apply_catch_a_target_model_change(project):
    model = project / "mymodels.py"
    model.write_text(MODEL.replace("nn.Linear(16, num_classes)", "nn.Linear(16, num_classes, bias=False)"))
    result = graft_in(project, "recipe=ft", "check=plans/ft.plan.json")
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:] == [
        "target:",
        f"  ~ structure: its tensors differ (inventory sha256 {json.loads((project / 'plans' / 'ft.plan.json').read_text())['target']['inventory_sha256'][:12]} -> "
        + re.search(r"-> ([0-9a-f]{12})\)", result.stdout)[1] + ")",
        "entries:",
        "  - head.bias  [5]  f32  keep",
    ]
    result = graft_in(project, "apply=plans/ft.plan.json", "output.path=out.safetensors")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: target: mymodels.Net changed since the plan was made (its tensors differ: gone head.bias)"
    )
    assert no_checkpoints(project)


def test_apply_runs_the_reviewed_plan_exactly_as_a_direct_run(project):
    direct = graft_in(project, "recipe=ft", "output.path=direct.safetensors")
    assert direct.returncode == 0, direct.stderr
    applied = graft_in(project, "apply=plans/ft.plan.json", "output.path=applied.safetensors")
    assert applied.returncode == 0, applied.stderr
    a, b = load_file(project / "direct.safetensors"), load_file(project / "applied.safetensors")
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (project / "direct.safetensors").read_bytes() == (project / "applied.safetensors").read_bytes()
    with safe_open(project / "applied.safetensors", "pt") as f:
        assert f.metadata()["torchgraft.plan_sha256"] == sha(project / "plans" / "ft.plan.json")
    assert applied.stderr.splitlines()[-1].startswith("applied plans/ft.plan.json: wrote applied.safetensors (12 tensors, ")
    assert list(project.glob("outputs/apply_ft/*/plan.json"))  # the run directory is named after the plan


def test_apply_refuses_a_hand_edited_plan_and_a_changed_source(project):
    plan = project / "plans" / "ft.plan.json"
    plan.write_text(plan.read_text().replace('"num_classes": 5', '"num_classes": 6'))
    result = graft_in(project, "apply=plans/ft.plan.json", "output.path=out.safetensors")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: apply: plans/ft.plan.json: the plan does not match its sha256 (was it edited by hand?); "
        "a plan runs only as it was written. Re-validate the recipe with: graft recipe=ft dry_run=true plan_dir=plans"
    )
    plan.write_text(plan.read_text().replace('"num_classes": 6', '"num_classes": 5'))  # undo the edit
    save_file(encoder_tensors(seed=2), str(project / "ckpt" / "encoder.safetensors"))  # a new epoch over the old path
    result = graft_in(project, "apply=plans/ft.plan.json", "output.path=out.safetensors")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sources.pretrained: ckpt/encoder.safetensors changed since the plan was made (mtime_ns differ)"
    )
    assert no_checkpoints(project) and not list(project.rglob("outputs/*/*/plan.json"))


def test_hash_mode_catches_values_changed_under_the_same_header(project, monkeypatch):
    result = graft_in(project, "recipe=ft", "dry_run=true", "plan_dir=pinned", "verify_sources=hash")
    assert result.returncode == 0, result.stderr
    source = project / "ckpt" / "encoder.safetensors"
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    pinned = json.loads((project / "pinned" / "ft.plan.json").read_text())["sources"][0]["fingerprint"]
    assert pinned["content_sha256"] == before
    # Same names, shapes, dtypes and size; other values; mtime put back (as `cp -p` would).
    stat = source.stat()
    tensors = encoder_tensors()
    tensors["encoder.layers.2.weight"] = tensors["encoder.layers.2.weight"] * 2
    save_file(tensors, str(source))
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = hashlib.sha256(source.read_bytes()).hexdigest()
    assert source.stat().st_size == stat.st_size and after != before

    result = graft_in(project, "recipe=ft", "check=pinned/ft.plan.json")
    assert result.returncode == 1
    assert result.stdout.splitlines()[2:] == ["sources:", f"  ~ pretrained: content_sha256 {before[:12]} -> {after[:12]}"]

    # What apply checks before it writes anything, in-process: the fast plan cannot see
    # the change (the documented trade-off); the pinned one refuses.
    monkeypatch.chdir(project)
    fast, hashed = read_plan("plans/ft.plan.json", "apply"), read_plan("pinned/ft.plan.json", "apply")
    for reader in open_plan_sources(fast).values():
        reader.close()
    with pytest.raises(DriftError) as refused:
        open_plan_sources(hashed)
    assert str(refused.value) == "sources.pretrained: ckpt/encoder.safetensors changed since the plan was made (content_sha256 differ)"
