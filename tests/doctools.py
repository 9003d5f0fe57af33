"""Run the fenced blocks of README.md and docs/*.md the way tests/test_docs.py does, so that what
the docs show is what bnfold does.

The convention (docs/development.md says it for people):

- ```console: lines starting with ``$ `` are commands (a line ending in ``\\`` goes on on the
  next one); the lines after a command, up to the next one, are its output: stdout and stderr as
  one stream, as an 80-column terminal shows them (``COLUMNS=80``, output piped). A line that is
  only ``...`` stands for any number of lines, ``...`` inside a line for any text. Durations
  (``0.45 ms``, ``1.2 s``) and the scratch folder's path are normalised away. The command must
  exit 0, or the code a trailing ``# exit N`` names.
- ```sh, ```bash, ```shell: every line (blank lines and comments aside) is one command, run with
  bash, which must exit 0 or ``# exit N``; its output is not compared.
- ```python: the block runs as a script and must exit 0. A ```text block right after it
  (nothing but blank lines between) is its stdout, compared like a console block's output.
- ```json, ```yaml, ```toml: parsed. Any other ```text block is shown as it is.
- A block right after ``<!-- not run: why -->`` is not run (it needs GitHub, a GPU, the network,
  or minutes).

Every block of one document runs in order, in one scratch folder that holds a copy of the
repository's ``models/`` (without anything generated): a block may use what an earlier one made.

``python -m tests.doctools docs/x.md`` prints what every console block of a page really shows,
to paste when the output changes on purpose.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

RUN_LANGS = {"console", "sh", "bash", "shell", "python"}
DATA_LANGS = {"json", "yaml", "toml"}
LANGS = RUN_LANGS | DATA_LANGS | {"text"}

_FENCE = re.compile(r"^```([\w-]*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(\S.*?)\s*-->$")
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")
_DURATION = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:e-?\d+)?\s?(?:ms|s|µs|us|min)\b")
#: One command may run this long (seconds): the slowest documented command takes about 10.
TIMEOUT = 300


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts (1-based line of its fence), its language and text."""

    doc: Path
    line: int
    lang: str
    text: str
    not_run: str | None = None  # why, when marked ``<!-- not run: why -->``
    output_of_previous: bool = False  # a text block right after a python block

    @property
    def where(self) -> str:
        return f"{shown_path(self.doc)}:{self.line}"


def shown_path(doc: Path) -> str:
    """``doc`` relative to the repository, when it is in it."""
    return str(doc.relative_to(ROOT)) if ROOT in doc.parents else str(doc)


def blocks(doc: Path) -> list[Block]:
    """Every fenced block of ``doc``, in order."""
    lines = doc.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    last_end = -1  # index of the closing fence of the block before
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        before = [x for x in lines[:start] if x.strip()]
        marker = _NOT_RUN.match(before[-1].strip()) if before else None
        lang = match.group(1)
        shows_output = (
            lang == "text"
            and bool(found)
            and found[-1].lang == "python"
            and found[-1].not_run is None
            and not any(x.strip() for x in lines[last_end + 1 : start])
        )
        text = "\n".join(body) + "\n"
        found.append(
            Block(doc, start + 1, lang, text, marker.group(1) if marker else None, shows_output)
        )
        last_end = i
        i += 1
    return found


def unfenced(doc: Path) -> str:
    """``doc`` without its fenced blocks and inline code (what links are looked for in)."""
    text = doc.read_text(encoding="utf-8")
    text = re.sub(r"^```.*?^```$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


# -- comparing output ------------------------------------------------------------------------------


def normalise(text: str, scratch: Path | None = None) -> str:
    """Output as the docs show it: no scratch path, durations as ``<time>``, no trailing blanks."""
    if scratch is not None:
        for path in {str(scratch.resolve()), str(scratch)}:
            text = text.replace(path, "<scratch>")
    text = _DURATION.sub("<time>", text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def matches(expected: str, actual: str) -> bool:
    """Whether ``actual`` is ``expected`` with its ``...`` wildcards filled in."""
    pattern = ""
    for line in expected.splitlines():
        if line.strip() == "...":
            pattern += r"(?:[^\n]*\n)*?"
        else:
            pattern += ".*?".join(re.escape(part) for part in line.split("...")) + r"\n"
    return re.fullmatch(pattern, actual + "\n" if actual else "") is not None


def difference(expected: str, actual: str) -> str:
    diff = difflib.unified_diff(
        expected.splitlines(), actual.splitlines(), "shown", "real", lineterm="", n=2
    )
    return "\n".join(diff)


# -- running blocks --------------------------------------------------------------------------------


@dataclass
class Step:
    """One command of a console or shell block."""

    command: str
    line: int
    exit_code: int = 0
    output: list[str] = field(default_factory=list)


def console_steps(block: Block) -> list[Step]:
    """The commands of a console block with the output shown after each."""
    steps: list[Step] = []
    lines = block.text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.startswith("$ "):
            if not steps:
                raise ValueError(f"{block.where}: output before the first '$ ' command: {line!r}")
            steps[-1].output.append(line)
            i += 1
            continue
        command, first = line[2:], i
        while command.endswith("\\") and i + 1 < len(lines):
            i += 1
            command = command[:-1] + "\n" + lines[i].removeprefix("> ")
        steps.append(Step(command, block.line + 1 + first, _exit_code(command)))
        i += 1
    return steps


def shell_steps(block: Block) -> list[Step]:
    """The commands of a sh/bash block, one per line (``\\`` continues a line)."""
    steps: list[Step] = []
    pending, first = "", 0
    for i, line in enumerate(block.text.splitlines()):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not pending:
            first = i
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1] + "\n"
            continue
        steps.append(Step(pending, block.line + 1 + first, _exit_code(pending)))
        pending = ""
    return steps


def _exit_code(command: str) -> int:
    match = _EXIT.search(command)
    return int(match.group(1)) if match else 0


def scratch_env() -> dict[str, str]:
    """The environment of a documented command: this interpreter's bnfold and python first on
    PATH, 80 columns, no CI runner variables, unbuffered output (stdout and stderr interleave as
    on a terminal)."""
    drop = ("GITHUB_", "RUNNER_", "BNFOLD_", "FORCE_COLOR", "TTY_", "LINES", "COLUMNS", "CLICOLOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        COLUMNS="80",
        PYTHONUNBUFFERED="1",
        NO_COLOR="1",
        TERM="dumb",
    )
    return env


def make_scratch(scratch: Path) -> Path:
    """A scratch folder holding a copy of ``models/`` as shipped (no folded or generated models)."""
    scratch.mkdir(parents=True, exist_ok=True)
    shutil.copytree(
        ROOT / "models",
        scratch / "models",
        ignore=shutil.ignore_patterns("*.folded.onnx", "bench", "large*", "__pycache__"),
    )
    return scratch


@dataclass
class Outcome:
    """What one run of a command gave."""

    code: int
    output: str


def run(command: str | list[str], scratch: Path, env: dict[str, str]) -> Outcome:
    args = ["bash", "-c", command] if isinstance(command, str) else command
    try:
        done = subprocess.run(
            args,
            cwd=scratch,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        return Outcome(-1, f"timed out after {TIMEOUT} s\n{(exc.output or b'').decode()}")
    return Outcome(done.returncode, done.stdout.decode("utf-8", "replace"))


class Page:
    """The blocks of one page, run in order in one scratch folder."""

    def __init__(self, doc: Path, scratch: Path) -> None:
        self.doc = doc
        self.scratch = make_scratch(scratch)
        self.env = scratch_env()
        self.python_stdout: str | None = None  # of the python block just before

    def run(self) -> list[str]:
        """Run every block; one message per failure."""
        failures: list[str] = []
        for block in blocks(self.doc):
            failures += self.block(block)
        return failures

    def block(self, block: Block) -> list[str]:
        stdout, self.python_stdout = self.python_stdout, None
        if block.not_run is not None:
            return []
        if block.lang not in LANGS:
            return [f"{block.where}: block language {block.lang!r} is none of {sorted(LANGS)}"]
        if block.lang == "console":
            return [f for s in console_steps(block) for f in self.step(s, compare=True)]
        if block.lang in ("sh", "bash", "shell"):
            return [f for s in shell_steps(block) for f in self.step(s, compare=False)]
        if block.lang == "python":
            return self.python(block)
        if block.lang in DATA_LANGS:
            return parse(block)
        if block.output_of_previous and stdout is not None:
            expected, actual = normalise(block.text), normalise(stdout, self.scratch)
            if not matches(expected, actual):
                return [f"{block.where}: python printed:\n{difference(expected, actual)}"]
        return []

    def step(self, step: Step, *, compare: bool) -> list[str]:
        outcome = run(step.command, self.scratch, self.env)
        where = f"{shown_path(self.doc)}:{step.line}: $ {step.command}"
        failures = []
        if outcome.code != step.exit_code:
            failures.append(
                f"{where}\nexited {outcome.code}, the page says {step.exit_code}:\n"
                + outcome.output
            )
        if compare:
            expected = normalise("\n".join(step.output))
            actual = normalise(outcome.output, self.scratch)
            if not matches(expected, actual):
                failures.append(f"{where}\noutput differs:\n{difference(expected, actual)}")
        return failures

    def python(self, block: Block) -> list[str]:
        try:
            done = subprocess.run(
                [sys.executable, "-c", block.text],
                cwd=self.scratch,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            return [f"{block.where}: python block timed out after {TIMEOUT} s"]
        self.python_stdout = done.stdout.decode("utf-8", "replace")
        if done.returncode != 0:
            err = done.stderr.decode("utf-8", "replace")
            return [f"{block.where}: python block exited {done.returncode}:\n{err}"]
        return []


def parse(block: Block) -> list[str]:
    """A data block must parse as what its fence says."""
    try:
        if block.lang == "json":
            json.loads(block.text)
        elif block.lang == "yaml":
            import yaml  # the test extra

            yaml.safe_load(block.text)
        else:
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                return []
            tomllib.loads(block.text)
    except Exception as exc:
        return [f"{block.where}: not valid {block.lang}: {exc}"]
    return []


def main(argv: list[str]) -> None:
    """Print what each console command of the given pages really shows (to paste it)."""
    import tempfile

    for name in argv:
        doc = Path(name).resolve()
        with tempfile.TemporaryDirectory() as tmp:
            page = Page(doc, Path(tmp) / "work")
            for block in blocks(doc):
                if block.not_run is not None or block.lang not in RUN_LANGS:
                    continue
                print(f"===== {block.where} ({block.lang})")
                if block.lang == "python":
                    print("\n".join(page.python(block)) or normalise(page.python_stdout or ""))
                    continue
                shell = block.lang != "console"
                for step in shell_steps(block) if shell else console_steps(block):
                    outcome = run(step.command, page.scratch, page.env)
                    print(f"$ {step.command}")
                    if not shell or outcome.code != step.exit_code:
                        print(normalise(outcome.output, page.scratch))
                    if outcome.code != step.exit_code:
                        print(f"[exit {outcome.code}; the page says {step.exit_code}]")


if __name__ == "__main__":
    main(sys.argv[1:])
