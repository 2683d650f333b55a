"""Planning, dry runs and byte copies never import torch (1.5 s and 220 MB of start-up).

Each case runs in a fresh interpreter where importing torch raises, so any import of
it on these paths fails the test with the importer's traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.slow  # subprocesses: run by `pytest -m slow` (CI runs both tiers)

BLOCK_TORCH = """
import sys
class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch imported on a path that must not need it")
sys.meta_path.insert(0, BlockTorch())
"""

API = BLOCK_TORCH + """
import json, torchgraft
from pathlib import Path
from torchgraft.plans.files import write_plan
recipe, out = json.loads(sys.argv[1]), sys.argv[2]
plan = torchgraft.plan(recipe)
write_plan(plan, Path(out).parent / "plan", torchgraft.render(plan))
torchgraft.execute(plan, out)
"""

CLI = BLOCK_TORCH + """
from torchgraft.cli.graft import main
sys.argv = ["graft", *sys.argv[1:]]
main()
"""


def _source(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    state = {f"model.layers.{i}.{p}": torch.randn(8, 4, generator=generator) for i in range(3) for p in ("w", "b")}
    state["model.embed.weight"] = torch.randn(5, 4, generator=generator).to(torch.bfloat16)
    path = tmp_path / "src.safetensors"
    save_file(state, path)
    return path, state


def _recipe(src: Path) -> dict:
    return {"sources": {"src": str(src)}, "target": None, "policy": {"unused": "ignore"},
            "rules": [{"from": "src", "select": "model.layers.{0,2}", "rename": {"model.layers.{i}": "blocks.{i}"}},
                      {"from": "src", "select": "model.embed"}]}


def _copied_without_torch(tmp_path: Path, src: Path, state: dict[str, torch.Tensor]) -> None:
    """The API run of ``_recipe(src)`` with torch blocked; every tensor equals the source's."""
    out = tmp_path / "out" / "model.safetensors"
    out.parent.mkdir()
    result = subprocess.run([sys.executable, "-c", API, json.dumps(_recipe(src)), str(out)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    got = load_file(out)
    assert sorted(got) == ["blocks.0.b", "blocks.0.w", "blocks.2.b", "blocks.2.w", "model.embed.weight"]
    for key in ("0.w", "2.w", "2.b"):
        assert torch.equal(got[f"blocks.{key}"], state[f"model.layers.{key}"])
    assert torch.equal(got["model.embed.weight"], state["model.embed.weight"])
    assert (tmp_path / "out" / "plan.json").exists()


def test_plan_render_and_byte_copy_run_without_torch(tmp_path):
    src, state = _source(tmp_path)
    _copied_without_torch(tmp_path, src, state)


def test_cli_dry_run_without_torch(tmp_path):
    src, _ = _source(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bytes.yaml").write_text(json.dumps(_recipe(src)))
    said_numpy = 'import atexit; atexit.register(lambda: print("numpy imported:", "numpy" in sys.modules))\n'
    result = subprocess.run([sys.executable, "-c", said_numpy + CLI, "recipe=bytes", "dry_run=true", "hydra.run.dir=run"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "blocks.2.w          [8,4]  f32   ← src:model.layers.2.w  (rules[0])" in result.stdout
    assert result.stdout.endswith("numpy imported: False\n")  # numpy too waits for a cast that needs it
    assert "no checkpoint written" in result.stderr
    assert list(tmp_path.glob("**/*.safetensors")) == [src]


def test_a_transform_still_imports_torch_when_it_runs(tmp_path):
    """The block is real: a cast of a bfloat16 tensor to float16 needs torch, and the same script then fails."""
    src, _ = _source(tmp_path)
    recipe = _recipe(src) | {"output": {"dtype": "float16"}}
    out = tmp_path / "model.safetensors"
    result = subprocess.run([sys.executable, "-c", API, json.dumps(recipe), str(out)], capture_output=True, text=True)
    assert result.returncode == 1
    assert "ImportError: torch imported on a path that must not need it" in result.stderr
    assert not out.exists()


def test_a_torch_zip_source_is_copied_without_torch(tmp_path):
    """pytorch_model.bin -> model.safetensors: torch_pickle reads data.pkl, the tensors are byte ranges."""
    _, state = _source(tmp_path)
    state["model.layers.0.w"] = torch.nn.Parameter(state["model.layers.0.w"])  # saved as _rebuild_parameter
    src = tmp_path / "pytorch_model.bin"
    torch.save(state, src)
    _copied_without_torch(tmp_path, src, state)


def test_a_float32_cast_runs_without_torch(tmp_path):
    """output.dtype bfloat16 / float16 of float32 tensors: rounded in numpy (execution.casts), as torch rounds."""
    generator = torch.Generator().manual_seed(1)
    state = {f"model.layers.{i}.{p}": torch.randn(8, 4, generator=generator) * 1e4 for i in range(3) for p in ("w", "b")}
    state["model.layers.0.w"][0, :4] = torch.tensor([float("nan"), float("inf"), 1e-40, 65520.0])
    state["model.embed.weight"] = torch.randn(5, 4, generator=generator).to(torch.bfloat16)  # already bf16: copied
    src = tmp_path / "src.pt"
    torch.save(state, src)
    for dtype in ("bfloat16", "float16"):
        out = tmp_path / dtype / "model.safetensors"
        out.parent.mkdir()
        recipe = _recipe(src) | {"output": {"dtype": dtype}}
        if dtype == "float16":
            recipe["rules"] = recipe["rules"][:1]  # bf16 -> f16 would need torch
        result = subprocess.run([sys.executable, "-c", API, json.dumps(recipe), str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        got = load_file(out)
        for key in ("0.w", "0.b", "2.w"):
            want = state[f"model.layers.{key[0]}.{key[2]}"].to(getattr(torch, dtype))
            assert torch.equal(got[f"blocks.{key}"].view(torch.int16), want.view(torch.int16)), (dtype, key)


def test_a_float32_mean_runs_without_torch(tmp_path):
    """merge: mean of float32 tensors (to float32 or bfloat16): numpy, as merges.merge computes it."""
    from torchgraft.execution.merges import merge

    sources = []
    for s in range(3):
        generator = torch.Generator().manual_seed(s)
        state = {f"layers.{i}.weight": torch.randn(16, 8, generator=generator) * 1e3 for i in range(2)}
        state["layers.0.weight"][0, s] = (float("nan"), float("inf"), 1e-40)[s]  # a NaN meeting a NaN takes torch
        sources.append(state)
        save_file(state, tmp_path / f"m{s}.safetensors")
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype / "model.safetensors"
        out.parent.mkdir()
        recipe = {"sources": {n: str(tmp_path / f"m{s}.safetensors") for s, n in enumerate("abc")}, "target": None,
                  "rules": [{"from": ["a", "b", "c"], "merge": "mean"}], "output": {"dtype": dtype}}
        result = subprocess.run([sys.executable, "-c", API, json.dumps(recipe), str(out)], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        got = load_file(out)
        for key in got:
            want = merge("mean", [lambda t=s[key]: t for s in sources], key, "rules[0]").to(getattr(torch, dtype))
            assert got[key].view(torch.uint8).equal(want.view(torch.uint8)), (dtype, key)
