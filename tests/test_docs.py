"""The docs cannot drift: every fenced block of README.md and docs/*.md runs (tests/doctools.py
says how), every relative link resolves, every reason code and command is documented, and the
CI snippets name only what exists."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bnfold.cli import app
from bnfold.fold.rules.reasons import HINTS, Reason
from tests import doctools
from tests.doctools import DOCS, ROOT, Block

README = ROOT / "README.md"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_every_block_runs_as_shown(doc: Path, tmp_path: Path) -> None:
    try:
        failures = doctools.Page(doc, tmp_path / "work").run()
    finally:  # the README's ResNet-50 and its folded copy are 200 MB
        shutil.rmtree(tmp_path / "work", ignore_errors=True)
    assert not failures, "\n\n".join(failures)


# -- the convention itself ---------------------------------------------------------------------


def test_wildcards_and_durations() -> None:
    assert doctools.matches("a\n...\nz", "a\nb\nc\nz")
    assert doctools.matches("a\n...\nz", "a\nz")
    assert doctools.matches("took ... rounds", "took 47 rounds")
    assert not doctools.matches("a\nz", "a\nb\nz")
    assert not doctools.matches("a", "a\nb")
    assert not doctools.matches("", "something")
    shown = doctools.normalise("wrote x in 1.04 s, 0.45 ms per run; 3 samples; 2 output(s)  \n\n")
    assert shown == "wrote x in <time>, <time> per run; 3 samples; 2 output(s)"


def test_blocks_carry_their_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- not run: needs a GPU -->\n```sh\nnvidia-smi\n```\n\n"
        "```python\nprint(1)\n```\n\n```text\n1\n```\n\nprose\n\n```text\nliteral\n```\n"
    )
    found = doctools.blocks(page)
    assert [(b.lang, b.not_run, b.output_of_previous) for b in found] == [
        ("sh", "needs a GPU", False),
        ("python", None, False),
        ("text", None, True),
        ("text", None, False),
    ]


def test_a_wrong_output_or_exit_code_fails(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```console\n$ echo hello\nhello\n$ false   # exit 1\n$ echo 1; exit 3\n1\n```\n\n"
        "```console\n$ echo real\nshown\n```\n\n```python\nprint(2)\n```\n\n```text\n3\n```\n"
        "\n```yaml\na: [\n```\n\n```make\nall:\n```\n"
    )
    failures = doctools.Page(page, tmp_path / "work").run()
    assert len(failures) == 5, failures
    assert "exited 3, the page says 0" in failures[0]
    assert "-shown\n+real" in failures[1]
    assert "python printed" in failures[2] and "not valid yaml" in failures[3]
    assert "'make'" in failures[4]


# -- what the pages must say -------------------------------------------------------------------


def _links(doc: Path) -> list[str]:
    return re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", doctools.unfenced(doc))


def _anchors(doc: Path) -> set[str]:
    """GitHub's ids for the headings of ``doc``."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#+\s+(.+?)\s*$", doctools.unfenced(doc), re.M):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        seen[slug] = seen.get(slug, -1) + 1
        if seen[slug]:
            seen[f"{slug}-{seen[slug]}"] = 0
    return set(seen)


def test_every_relative_link_resolves() -> None:
    broken = []
    for doc in DOCS:
        for link in _links(doc):
            if re.match(r"^[a-z][a-z0-9+.-]*:", link):
                continue  # https:, mailto:
            path, _, anchor = link.partition("#")
            target = (doc.parent / path).resolve() if path else doc
            if not target.exists() or (ROOT not in target.parents and target != ROOT):
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in _anchors(target):
                broken.append(f"{doc.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_reason_code_and_hint_is_in_reasons_md() -> None:
    page = (ROOT / "docs" / "reasons.md").read_text()
    missing = [r.value for r in Reason if f"`{r.value}`" not in page]
    assert not missing, f"docs/reasons.md does not explain {missing}"
    hints = [h for h in HINTS.values() if h not in page.replace("\n", " ")]
    assert not hints, f"docs/reasons.md does not give the fix {hints}"


def test_every_command_is_in_the_readme() -> None:
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"})
    commands = re.findall(r"^  (\w+)\s{2,}", result.stdout.split("Commands:")[1], re.M)
    assert {"fold", "inspect", "check", "verify", "bench", "schema"} <= set(commands)
    readme = README.read_text()
    missing = [c for c in commands if f"bnfold {c}" not in readme]
    assert not missing, f"README.md does not show {missing}"


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 200


def _yaml_blocks() -> list[tuple[Block, Any]]:
    yaml = pytest.importorskip("yaml")
    return [
        (b, yaml.safe_load(b.text)) for d in DOCS for b in doctools.blocks(d) if b.lang == "yaml"
    ]


def test_ci_snippets_name_only_what_exists() -> None:
    """The action's inputs, the pre-commit hook's id, and no tag: none exists."""
    yaml = pytest.importorskip("yaml")
    inputs = set(yaml.safe_load((ROOT / "action.yml").read_text())["inputs"])
    hooks = {h["id"] for h in yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())}
    uses = precommit = 0
    for block, data in _yaml_blocks():
        for step in data if isinstance(data, list) else []:
            if str(step.get("uses", "")).startswith("bnfold/bnfold"):
                uses += 1
                assert step["uses"] == "bnfold/bnfold@main", block.where
                assert set(step.get("with", {})) <= inputs, block.where
        for repo in data.get("repos", []) if isinstance(data, dict) else []:
            precommit += 1
            for hook in repo["hooks"]:
                if repo["repo"] == "local":
                    assert hook["entry"].startswith("bnfold check") and hook["language"] == "system"
                else:
                    assert repo["rev"] == "main" and hook["id"] in hooks, block.where
    assert uses and precommit
    for doc in [*DOCS, ROOT / ".pre-commit-hooks.yaml", ROOT / "action.yml"]:
        text = doc.read_text()
        assert not re.search(r"bnfold@v\d|rev: v\d|<owner>|pip install bnfold\b", text), doc
