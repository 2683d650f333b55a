"""One plan, many ranks: the split by output file, and ``torchrun`` runs of ``python -m
torchgraft`` (2 gloo ranks on the CPU) against one process."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import torchgraft
from torchgraft.checkpoints import open_checkpoint
from torchgraft.checkpoints.sharded import ShardedWriter, split, write_index
from torchgraft.core.errors import GraftError, RankFailed
from torchgraft.core.tensors import TensorInfo
from torchgraft.execution.ranks import Failure, World, deal


def test_deal_puts_the_largest_first_onto_the_least_loaded_rank_ties_to_the_lower():
    # 9 (item 1) -> rank 0, 9 (item 4) -> rank 1, 5 (item 0) -> rank 0, 5 (item 2) -> rank 1, 1 -> rank 0 (14 each)
    assert deal([5, 9, 5, 1, 9], 2) == [0, 0, 1, 0, 1]
    assert deal([5, 9, 5, 1, 9], 1) == [0] * 5
    assert deal([3, 3, 3], 4) == [0, 1, 2]
    assert deal([], 3) == []


def _recipe(src: Path, shard_size: int | None) -> dict:
    return {"sources": {"src": str(src)}, "target": None,
            "rules": [{"from": "src", "rename": {"model.layers.{i}": "layers.{i}"}}],
            "output": {"dtype": "bfloat16", "shard_size": shard_size}}


@pytest.fixture
def source(tmp_path) -> Path:
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "src.safetensors"
    save_file({f"model.layers.{i}.weight": torch.randn(8 + i, 16, generator=g) for i in range(7)}, path)
    return path


@pytest.mark.parametrize("size", [2, 3, 5])
def test_the_ranks_shares_cover_the_plan_once_and_write_one_processs_bytes(source, tmp_path, size):
    plan = torchgraft.plan(_recipe(source, 600))
    alone = torchgraft.execute(plan, tmp_path / "alone")
    shares = [World(rank, size).share(plan, "directory") for rank in range(size)]
    assert sorted(k for s in shares for k in (e.key for e in s.plan.entries)) == sorted(e.key for e in plan.entries)
    groups = split([TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries], 600)
    assert sorted(n for s in shares for n in s.shards) == list(range(len(groups)))
    loads = [sum(sum(i.nbytes for i in groups[n]) for n in s.shards) for s in shares]
    assert max(loads) - min(loads) <= max(sum(i.nbytes for i in g) for g in groups)  # balanced by bytes
    # each rank's writer, into one directory, then rank 0's index: the one process's files, byte for byte
    together = tmp_path / f"together{size}"
    together.mkdir()
    metadata = {"format": "pt", "torchgraft.plan_sha256": plan.sha256, "torchgraft.version": plan.version}
    infos = [TensorInfo(e.key, tuple(e.shape), e.dtype) for e in plan.entries]
    with open_checkpoint(source, field="src") as reader:
        for share in shares:
            with ShardedWriter(together, infos, metadata, 600, share.shards) as writer:
                for entry in share.plan.entries:
                    writer.write(entry.key, reader.read(entry.key.replace("layers", "model.layers")).to(torch.bfloat16))
    write_index(together, groups)
    names = sorted(p.name for p in alone.iterdir())
    assert sorted(p.name for p in together.iterdir()) == names
    assert all((alone / n).read_bytes() == (together / n).read_bytes() for n in names)


# -- under torchrun ---------------------------------------------------------------------------


def _torchrun(cwd: Path, nproc: int, *args: str) -> tuple[subprocess.CompletedProcess, dict[int, str]]:
    """``torchrun --standalone --nproc-per-node=N -m torchgraft ARGS``; each rank's stderr."""
    logs = cwd / f"logs{nproc}"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                           "--redirects=3", f"--log-dir={logs}", "-m", "torchgraft", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=300)
    stderr = {int(p.parent.name): p.read_text() for p in logs.rglob("stderr.log")}
    return done, stderr


def _exit_codes(torchrun_stderr: str) -> dict[int, int]:
    """The failed ranks' exit codes from torchrun's summary."""
    found = re.findall(r"rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)", torchrun_stderr)
    return {int(rank): int(code) for rank, code in found}


@pytest.mark.slow
def test_two_ranks_write_the_sharded_directory_of_one_process(source, tmp_path):
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "split.yaml").write_text(
        f"sources: {{src: {source}}}\ntarget: null\nrules:\n  - {{from: src, rename: {{'model.layers.{{i}}': 'layers.{{i}}'}}}}\n"
        "output: {dtype: bfloat16, shard_size: 600}\n")
    done, stderr = _torchrun(tmp_path, 2, "recipe=split", f"output.path={tmp_path / 'two'}")
    assert done.returncode == 0, done.stderr[-3000:] + str(stderr)
    assert all("verified against the plan" in stderr[rank] for rank in (0, 1))
    alone = torchgraft.execute(torchgraft.plan(_recipe(source, 600)), tmp_path / "one")
    names = sorted(p.name for p in alone.iterdir())
    assert len(names) == 7  # 6 shards and the index
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    assert all((alone / n).read_bytes() == (tmp_path / "two" / n).read_bytes() for n in names)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two.dcp", "two.safetensors"])
def test_two_ranks_write_a_dcp_checkpoint_or_one_file_with_the_plans_values(source, tmp_path, name):
    """DCP: each rank saves its share through DCP's writer; one file: rank 0 writes it."""
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file

    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "cast.yaml").write_text(
        f"sources: {{src: {source}}}\ntarget: null\nrules:\n  - {{from: src, rename: {{'model.layers.{{i}}': 'layers.{{i}}'}}}}\n"
        "output: {dtype: bfloat16}\n")
    done, stderr = _torchrun(tmp_path, 2, "recipe=cast", f"output.path={tmp_path / name}")
    assert done.returncode == 0, done.stderr[-3000:] + str(stderr)
    want = {k.replace("model.layers", "layers"): v.to(torch.bfloat16) for k, v in load_file(source).items()}
    if name.endswith(".dcp"):
        got = {k: torch.empty_like(v) for k, v in want.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "torch.distributed is disabled ... single process"
            dcp.load(got, checkpoint_id=str(tmp_path / name), no_dist=True)
        assert len(list((tmp_path / name).glob("*.distcp"))) >= 2  # both ranks wrote data
    else:
        got = load_file(tmp_path / name)
    assert sorted(got) == sorted(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_a_tensor_rank_1_cannot_read_stops_both_ranks_and_publishes_nothing(tmp_path):
    """A DCP source with one chunk's bytes zeroed (a real fault, found only by reading it):
    the tensor is in a shard rank 1 writes, so rank 1 fails while rank 0 has written its own."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save({f"w{i}": torch.full((4 + i, 8), float(i)) for i in range(4)}, checkpoint_id=str(tmp_path / "src"), no_dist=True)
    plan = torchgraft.plan({"sources": {"src": str(tmp_path / "src")}, "target": None,
                            "rules": [{"from": "src", "rename": {"w{i}": "layers.{i}.weight"}}], "output": {"shard_size": 100}})
    rank_1 = World(1, 2).share(plan, "directory").plan.entries
    assert "layers.2.weight" in [e.key for e in rank_1]
    with open_checkpoint(tmp_path / "src", field="src") as reader:
        chunk = next(reader.chunks("w2"))
    with open(tmp_path / "src" / chunk.file, "r+b") as f:
        f.seek(chunk.offset)
        f.write(bytes(chunk.length))
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "bad.yaml").write_text(
        f"sources: {{src: {tmp_path / 'src'}}}\ntarget: null\nrules:\n  - {{from: src, rename: {{'w{{i}}': 'layers.{{i}}.weight'}}}}\n"
        "output: {shard_size: 100}\n")
    done, stderr = _torchrun(tmp_path, 2, "recipe=bad", f"output.path={tmp_path / 'out'}")
    assert done.returncode != 0
    assert _exit_codes(done.stderr) == {0: 1, 1: 1}
    line = (f"error: sources.src: {tmp_path / 'src'}: 'w2': its chunk in {chunk.file} is not a readable tensor "
            "(UnpicklingError) (rank 1 of 2)")
    assert [stderr[rank].strip().splitlines()[-1] for rank in (0, 1)] == [line, line]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs2", "recipes", "src"]  # no output, no temporary


# -- failing together (the exchange, with torch.distributed's gather played by the test) ----


@pytest.fixture
def peer(monkeypatch):
    """Rank 1 of 2 (this process is rank 0): what it gives at each exchange."""
    import torch.distributed as dist

    given: list = []

    def all_gather_object(out, mine):
        out[0], out[1] = mine, given.pop(0)

    monkeypatch.setattr(dist, "all_gather_object", all_gather_object)
    return given


def test_a_rank_that_fails_stops_the_others_at_the_same_step_with_its_message(peer):
    world = World(0, 2)
    peer += [(None, "made"), (Failure(1, "sources.src", "src.dcp: 'w2' is not a readable tensor", True), None)]
    with world.step() as first:
        first.value = "mine"
    assert first.values == ["mine", "made"]
    with pytest.raises(RankFailed) as failed, world.step():
        pass
    assert str(failed.value) == "sources.src: src.dcp: 'w2' is not a readable tensor (rank 1 of 2)"
    assert world.failed and not peer  # one exchange each; none after


def test_a_bug_here_is_raised_as_it_is_here_and_a_user_error_elsewhere_comes_first(peer):
    peer.append((None, None))
    with pytest.raises(ZeroDivisionError), World(0, 2).step():
        1 / 0  # noqa: B018
    peer.append((Failure(1, "output.path", "out: cannot write (No space left on device, ENOSPC)", True), None))
    with pytest.raises(RankFailed, match=r"^output.path: out: cannot write .* \(rank 1 of 2\)$"), World(0, 2).step():
        1 / 0  # noqa: B018


def test_ranks_that_disagree_on_the_output_path_are_refused(peer):
    world = World(0, 2)
    peer.append((None, ("abc", "outputs/split/2026-12-02_00-31-45_2/model.safetensors")))
    with world.step() as same:
        same.value = ("abc", "outputs/split/2026-12-02_00-31-45/model.safetensors")
    with pytest.raises(GraftError, match=r"^output.path: the 2 ranks disagree on the output path \(rank 0: outputs/split/2026-12-02_00-31-45/"
                                         r"model.safetensors, rank 1: outputs/split/2026-12-02_00-31-45_2/model.safetensors\); give output.path$"):
        world.same("output path", "output.path", [v[1] for v in same.values], "; give output.path")
    assert world.failed
