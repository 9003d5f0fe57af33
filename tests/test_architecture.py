"""The house keeps its shape: declared layers (import-linter contracts in pyproject.toml), small
modules, a public face at the top, and an architecture page that names every subpackage."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "bnfold"


def test_import_contracts_are_kept() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    run = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout and run.stdout.count("KEPT") >= 4, run.stdout


def test_no_module_is_over_500_lines() -> None:
    sizes = {
        str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")
    }
    big = {path: n for path, n in sizes.items() if n > 500}
    assert not big, big


def test_the_top_holds_only_the_public_face() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "_version.py", "api.py", "batch.py", "errors.py"]
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == [
        "bench",
        "cli",
        "fold",
        "model",
        "numerics",
        "runtime",
        "verification",
    ], packages


def test_architecture_page_names_every_subpackage() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    for init in PACKAGE.rglob("__init__.py"):
        folder = init.parent.relative_to(ROOT).as_posix()
        if folder != "bnfold":
            assert f"{folder}/" in page, f"docs/architecture.md does not name {folder}/"
    for init in PACKAGE.rglob("__init__.py"):  # each says what it is for
        assert init.read_text().lstrip().startswith('"""'), f"{init} has no docstring"


def test_the_version_is_pyprojects() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    import bnfold

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert bnfold.__version__ == project["version"]
