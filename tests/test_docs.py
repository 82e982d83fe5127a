"""The docs: an MkDocs site built with --strict (broken links and missing pages fail), whose command and
environment-variable references are generated from the code."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO


def docs_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_hooks", REPO / "docs" / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_site_builds_strictly_with_generated_references(tmp_path: Path) -> None:
    import click

    from feature_platform.cli import build_cli
    from feature_platform.variables import VARIABLES

    done = subprocess.run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir",
                           str(tmp_path / "site")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    commands = (tmp_path / "site" / "reference" / "commands" / "index.html").read_text()
    for name, command in build_cli().commands.items():
        children = command.commands if isinstance(command, click.Group) else {"": command}
        for child in children:
            assert f"featurectl {name} {child}".strip() in commands, (name, child)
    assert "No such option" not in commands and "<!-- generated" not in commands
    variables = (tmp_path / "site" / "reference" / "variables" / "index.html").read_text()
    assert all(v.name in variables for v in VARIABLES)
    assert "FEATURE_PLATFORM_SERVER_WORKERS" in variables


def test_readme_is_a_front_page_that_links_every_page() -> None:
    """README stays short (what it is, set-up, a tour, figures, links); every docs page is linked from it."""
    readme = (REPO / "README.md").read_text()
    assert len(readme) < 12_000
    assert "scripts/dev demo" in readme and "scripts/dev test" in readme
    pages = {p.relative_to(REPO).as_posix() for p in (REPO / "docs").rglob("*.md")}
    assert pages and all(page in readme for page in pages - {"docs/index.md"}), pages
    assert "## Set up (two commands)" in readme and "## A five-minute tour" in readme
