"""Example checkpoints are built on first use; two processes building one at once
(pytest-xdist workers, two ``graft`` runs) must not swap a file under a plan."""

from __future__ import annotations

import pytest

from torchgraft.examples.checkpoints import EXAMPLES, example_path


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_build_that_finishes_second_leaves_the_first_in_place(tmp_path, monkeypatch, kind):
    monkeypatch.setenv("TORCHGRAFT_EXAMPLES_DIR", str(tmp_path))
    final = tmp_path / "race"

    def write(where, text):
        if kind == "folder":
            where.mkdir()
            where = where / "model.safetensors"
        where.write_text(text)

    def build(into):  # while this build runs, another process publishes the same example
        write(final, "first")
        write(into, "second")

    monkeypatch.setitem(EXAMPLES, "race", ("race", build))
    path = example_path("race")
    inner = final if kind == "file" else final / "model.safetensors"
    assert path == str(final) and inner.read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]  # no build folder left
