"""The documentation cannot go stale: every plan sample of a bundled recipe in docs/ and
the README is what a dry run prints now (plan hashes and the examples folder masked), every
bundled recipe has its cookbook page, and the README's commands are CI's.

``TORCHGRAFT_UPDATE_DOCS=1 pytest tests/docs`` rewrites the samples from a fresh dry run.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import torchgraft
from conftest import REFERENCE_LIBRARIES
from torchgraft.core.version import __version__
from torchgraft.examples.checkpoints import examples_dir
from torchgraft.recipe.source import bundled_recipes

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BUNDLED = sorted(p.stem for p in bundled_recipes().glob("*.yaml"))
SAMPLE = re.compile(r"^```text\n\$ graft recipe=(\w+) dry_run=true\n(.*?)^```$", re.M | re.S)
HASH = re.compile(r"^# torchgraft plan [0-9a-f]{12}", re.M)
SHOWN_EXAMPLES = f"~/.cache/torchgraft/examples-{__version__}"


def _mask(text: str) -> str:
    return HASH.sub("# torchgraft plan <hash>", text)


def _fresh(name: str) -> str:
    """The plan text a dry run prints, with the examples folder shown as in a user's cache."""
    text = torchgraft.render(torchgraft.plan(name))
    here = str(examples_dir())
    home = os.path.expanduser("~").rstrip("/")
    shown = "~" + here[len(home):] if here.startswith(home + "/") else here
    return text.replace(shown, SHOWN_EXAMPLES)


def _samples() -> list[tuple[Path, str, str]]:
    return [(page, m.group(1), m.group(2)) for page in PAGES for m in SAMPLE.finditer(page.read_text(encoding="utf-8"))
            if m.group(1) in BUNDLED]


@REFERENCE_LIBRARIES  # plans the transformers recipes too
def test_every_plan_sample_is_what_a_dry_run_prints():
    samples = _samples()
    assert {name for _, name, _ in samples} == set(BUNDLED)  # each recipe's plan is shown somewhere
    fresh = {name: _fresh(name) for name in BUNDLED}
    if os.environ.get("TORCHGRAFT_UPDATE_DOCS") == "1":
        for page in {page for page, _, _ in samples}:
            text = page.read_text(encoding="utf-8")
            text = SAMPLE.sub(lambda m: f"```text\n$ graft recipe={m[1]} dry_run=true\n{fresh[m[1]]}```" if m[1] in fresh else m[0], text)
            page.write_text(text, encoding="utf-8")
        samples = _samples()
    for page, name, shown in samples:
        assert _mask(shown) == _mask(fresh[name]), f"{page.relative_to(ROOT)}: the plan of {name} (TORCHGRAFT_UPDATE_DOCS=1 rewrites it)"


@pytest.mark.parametrize("name", BUNDLED)
def test_every_bundled_recipe_has_a_cookbook_page_that_includes_its_file(name):
    page = ROOT / "docs" / "cookbook" / f"{name}.md"
    assert f'--8<-- "{name}.yaml"' in page.read_text(encoding="utf-8")
    assert f"cookbook/{name}.md" in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"({name}.md)" in (ROOT / "docs" / "cookbook" / "index.md").read_text(encoding="utf-8")


def test_the_readme_shows_the_bundled_default_recipe_and_ci_s_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"```yaml\n{(bundled_recipes() / 'conv_only.yaml').read_text(encoding='utf-8')}```" in readme
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert len(ci) == 2
    assert f"```bash\n{ci[0]}\n{ci[1]}\n```" in readme
    assert len(readme.encode()) <= 10 * 1024


def test_no_development_log_wording():
    words = re.compile(r"this round|issue \d|our machines|seed ÷|against the targets", re.I)
    found = [f"{page.relative_to(ROOT)}: {m[0]}" for page in PAGES for m in words.finditer(page.read_text(encoding="utf-8"))]
    assert found == []
