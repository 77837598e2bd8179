"""The app's staged copy bundles to the same FAB as the project it was copied from."""

from __future__ import annotations

from pathlib import Path

import pytest
from flwr.cli.build import build_fab_from_disk

from fl_shadow.apps import cli
from fl_shadow.apps.staging import app_files, stage_app
from fl_shadow.config import DEFAULT_CONFIG, load_config
from fl_shadow.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]

PYPROJECT = """\
[project]
name = "tiny-app"
version = "1.0.0"
dependencies = []

[tool.flwr.app]
publisher = "tests"
fab-include = ["**/*.py", "**/*.toml", "**/*.md", "**/*.json"]
fab-exclude = ["results/**"]

[tool.flwr.app.components]
serverapp = "tiny.server:app"
clientapp = "tiny.client:app"
"""


def _project(root: Path, gitignore: str) -> Path:
    files = {
        "pyproject.toml": PYPROJECT, ".gitignore": gitignore, "README.md": "# tiny\n",
        "tiny/__init__.py": "", "tiny/server.py": "app = None\n", "tiny/client.py": "app = 1\n",
        "tiny/notes.txt": "not bundled: no include pattern\n",
        "results/run.json": "{}", "results/deep/run.json": "[]",  # fab-exclude'd
        ".venv/lib/site.py": "x = 1\n", ".venv/pyvenv.cfg": "home = /usr\n",
        "build/lib/tiny/server.py": "app = 2\n", "out/keep.py": "kept = True\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "tiny" / "linked.py").symlink_to(root / "tiny" / "server.py")
    return root


def test_the_staged_copy_of_this_project_bundles_to_the_same_fab(tmp_path: Path) -> None:
    stage_app(ROOT, tmp_path / "app")
    assert build_fab_from_disk(tmp_path / "app") == build_fab_from_disk(ROOT)


def test_the_staged_copy_holds_the_bundle_and_one_file_per_otherwise_unmatched_pattern(
        tmp_path: Path) -> None:
    project = _project(tmp_path / "project", ".venv/\nbuild/\nout/\n")
    assert stage_app(project, tmp_path / "app") == 7
    staged = sorted(p.relative_to(tmp_path / "app").as_posix()
                    for p in (tmp_path / "app").rglob("*") if p.is_file())
    # results/run.json only so that Flower finds a file for "results/**" (it stays out of
    # the bundle); nothing ignored, unbundled or symlinked is copied.
    assert staged == [".gitignore", "README.md", "pyproject.toml", "results/run.json",
                      "tiny/__init__.py", "tiny/client.py", "tiny/server.py"]
    assert build_fab_from_disk(tmp_path / "app") == build_fab_from_disk(project)


def test_a_negated_gitignore_pattern_turns_the_pruning_off(tmp_path: Path) -> None:
    # Flower matches file by file: after "out/**" (which matches the folder out/ too),
    # "!out/keep.py" brings that file back into the bundle.
    project = _project(tmp_path / "project", ".venv/\nout/**\n!out/keep.py\n")
    assert "out/keep.py" in app_files(project)
    stage_app(project, tmp_path / "app")
    assert build_fab_from_disk(tmp_path / "app") == build_fab_from_disk(project)


def test_staging_refuses_a_folder_without_pyproject_and_a_non_empty_target(
        tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/pyproject.toml: not found"):
        app_files(tmp_path / "empty")
    project = _project(tmp_path / "project", "")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="busy: the staging folder must be empty"):
        stage_app(project, tmp_path / "busy")


def test_fl_shadow_run_names_an_app_it_cannot_stage_in_one_line(tmp_path: Path) -> None:
    config = load_config(None, [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="empty/pyproject.toml: not found; not a Flower app"):
        cli._launch(config, DEFAULT_CONFIG, [], tmp_path / "run", resume=False,
                    app_dir=tmp_path / "empty")
    project = _project(tmp_path / "project", "")
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"results/**"', '"nothing/**"'))
    with pytest.raises(ConfigError, match=r"project/pyproject.toml: .*did not match any files: "
                       r'"nothing/\*\*"'):
        cli._launch(config, DEFAULT_CONFIG, [], tmp_path / "run", resume=False, app_dir=project)
    assert not (tmp_path / "run").exists()
