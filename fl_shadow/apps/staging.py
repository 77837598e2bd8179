"""The Flower app's files, copied to a folder of their own for ``flwr run`` to bundle.

``flwr run DIR`` builds the app bundle (FAB) from DIR by walking *every* file under it,
resolving each path, and only then dropping what ``.gitignore`` and its include rules leave
out (Flower 1.41, ``flwr.cli.utils.collect_files``). A project with its virtual environment
inside (``make setup`` puts one in ``.venv``: ~51,000 files) pays ~4.5 s of that walk on every
run, before anything starts. :func:`stage_app` walks the project without entering the folders
``.gitignore`` ignores, selects the bundle's files with Flower's own rules (publish rules, then
``fab-include``/``fab-exclude``; Flower's errors for a bad pattern surface here), and copies
them (~150 files here, 0.1-0.2 s) to a folder that ``fl-shadow run`` hands to ``flwr run``.
Flower then applies all its rules to that folder as it would to the project, so the bundle is
the same, byte for byte (``tests/test_staging.py`` builds both). Because Flower refuses a
``fab-include``/``fab-exclude`` pattern that matches no file, the copy also holds, for each
such pattern that none of the bundle's files match, one file it matches (it stays out of the
bundle: an exclude pattern's file is excluded again).

Pruning a folder is exact because a gitignore pattern that matches a folder matches every
path under it; a negated pattern (``!keep.py``) could re-include a file under an ignored folder
in Flower's per-file matching, so with one in ``.gitignore`` nothing is pruned.
"""

from __future__ import annotations

import os
import shutil
import tomllib
from pathlib import Path

from flwr.cli.build import get_filtered_fab_paths, get_user_fab_patterns
from flwr.cli.utils import build_pathspec, filter_paths_for_publish, load_gitignore_patterns

GITIGNORE = ".gitignore"
PYPROJECT = "pyproject.toml"


def app_files(root: Path) -> dict[str, Path]:
    """The files ``flwr run`` needs to build ``root``'s bundle, by relative POSIX path.

    Like Flower's own walk, symlinks (files and folders) are left out; unlike it, folders that
    ``root/.gitignore`` ignores are not entered.

    Raises:
        FileNotFoundError: ``root`` has no ``pyproject.toml``.
        ValueError: Flower's, for a ``fab-include``/``fab-exclude`` pattern it refuses (one
            that matches no file) or a path nested too deep.
    """
    root = root.resolve()
    gitignore = root / GITIGNORE
    patterns = load_gitignore_patterns(gitignore) if gitignore.is_file() else []
    ignored = build_pathspec(patterns)
    prune = not any(p.lstrip().startswith("!") for p in patterns)
    files: dict[str, Path] = {}
    for folder, subfolders, names in os.walk(root, followlinks=False):
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else f"{base}/"
        if prune:  # in place: os.walk then skips them
            subfolders[:] = [d for d in subfolders if not ignored.match_file(f"{prefix}{d}/")]
        for name in names:
            path = Path(folder) / name
            if not path.is_symlink():
                files[f"{prefix}{name}"] = path
    if PYPROJECT not in files:
        raise FileNotFoundError(f"{root / PYPROJECT}: not found; not a Flower app")
    published = list(filter_paths_for_publish(files))
    config = tomllib.loads(files[PYPROJECT].read_text(encoding="utf-8"))
    needed = {PYPROJECT, *get_filtered_fab_paths(dict.fromkeys(published, b""), config)}
    if GITIGNORE in files:  # the staged copy must ignore what the project ignores
        needed.add(GITIGNORE)
    for pattern in (p for group in get_user_fab_patterns(config) for p in group or ()):
        spec = build_pathspec([pattern])
        if not any(spec.match_file(rel) for rel in needed):
            needed.add(next(rel for rel in published if spec.match_file(rel)))
    return {rel: files[rel] for rel in sorted(needed)}


def stage_app(root: Path, target: Path) -> int:
    """Copy the app's files (:func:`app_files`) under ``target``; returns how many.

    ``target`` must be empty or absent; relative paths are kept.
    """
    if target.exists() and any(target.iterdir()):
        raise ValueError(f"{target}: the staging folder must be empty")
    files = app_files(root)
    for rel, source in files.items():
        destination = target / rel
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, destination)
    return len(files)
