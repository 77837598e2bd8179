"""The ServerApp's run config: where the results land, and which experiment it reads.

Relative paths (``run-dir``, the config's ``output_dir``, ``data.path``, ``data.cache_dir``)
resolve against the operator's project folder, the run config's ``project-dir`` (what
``fl-shadow run`` passes: the folder it was invoked from); without one, against the ServerApp's
working directory, with a warning.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fl_shadow.apps import cli, server_app
from fl_shadow.apps.federation import build_federation
from fl_shadow.config import load_config
from fl_shadow.diagnostics import WHERE_LOAD, WHERE_TRAINING, RunWarning
from fl_shadow.errors import ConfigError
from fl_shadow.report import read_warnings

TINY = ["data.image_size=16", "partition.num_clients=2", "partition.sizes=[2, 6]",
        "partition.batch_sizes=[1]", "strategy.min_fit_clients=2",
        "strategy.min_available_clients=2", "attack.name=none", "model.width=4"]


def test_relative_paths_resolve_against_the_project_folder(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "configs" / "x.yaml").write_text("name: x\noutput_dir: out\n")
    run_config = {"config": "configs/x.yaml", "overrides": "; ".join(TINY),
                  "project-dir": str(project)}
    config, _ = server_app.config_from_run_config(run_config, project)
    assert config.output_dir == str(project / "out")
    run_dir = server_app.run_dir_of(run_config, config, project)
    assert run_dir.parent == project / "out" and run_dir.name.startswith("x-")
    assert server_app.run_dir_of({**run_config, "run-dir": "r/one"}, config, project) == \
        project / "r" / "one"
    absolute = tmp_path / "elsewhere"
    assert server_app.run_dir_of({"run-dir": str(absolute)}, config, project) == absolute


def test_without_a_project_folder_the_working_directory_is_used_and_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="fl_shadow.apps.server_app"):
        assert server_app.project_dir_of({"project-dir": ""}) == tmp_path
    assert f"relative paths resolve against the ServerApp's working directory {tmp_path}" \
        in caplog.text
    for value in ("relative/dir", str(tmp_path / "missing")):
        with pytest.raises(ConfigError, match=r"^project-dir: expected the absolute path of a "
                                              r"folder"):
            server_app.project_dir_of({"project-dir": value})


def test_fl_shadow_run_passes_its_folder_and_absolute_paths(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.chdir(tmp_path)
    run_config = tmp_path / "rc.toml"
    command = cli.flwr_command(Path("c.yaml"), ["train.rounds=2"], Path("runs/a"), num_clients=2,
                               cpus_per_client=1, gpus_per_client=0, run_config_file=run_config)
    assert command[:3] == ["flwr", "run", str(cli.APP_DIR)]
    assert run_config.read_text() == (
        f'config = "{tmp_path / "c.yaml"}"\noverrides = "train.rounds=2"\n'
        f'run-dir = "{tmp_path / "runs" / "a"}"\nresume = false\n'
        f'project-dir = "{tmp_path}"\n')


def test_a_results_folder_inside_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    config = load_config(None, TINY)
    with pytest.raises(ConfigError, match=r"^run-dir: .*file is a file, not a folder \(on the "
                                          r"way to .*file/run\)$"):
        server_app.run_dir_of({"run-dir": "file/run"}, config, tmp_path)


# ---- the warnings of a run ------------------------------------------------------------------------
NO_NOISE = "defense.params.noise_multiplier is 0: updates are clipped but not noised, epsilon is " \
    "infinite"


def test_the_servers_load_time_warnings_reach_the_results_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_app, "route_to_flower", lambda: None)  # keep pytest's log capture
    overrides = [*TINY, "defense.name=dp", "defense.params.noise_multiplier=0"]
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={
        "config": "default", "overrides": "; ".join(overrides), "run-dir": "run",
        "project-dir": str(tmp_path)})
    server_app.build_server(context)
    assert read_warnings(tmp_path / "run") == [RunWarning(WHERE_LOAD, NO_NOISE)]


def test_an_in_process_federation_keeps_its_checks_warnings() -> None:
    config = load_config(None, [*TINY, "defense.name=dp", "defense.params.noise_multiplier=0"])
    assert build_federation(config, check=True).load_warnings == (NO_NOISE,)
    assert build_federation(config).load_warnings == ()  # not checked: nothing warned


def fake_flwr_run(run_dir: Path, state: str):  # type: ignore[no-untyped-def]
    """A ``subprocess.run`` that leaves what a run in ``state`` leaves in its folder."""
    def run(*args, **kwargs):  # type: ignore[no-untyped-def]
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "status.json").write_text(json.dumps({"state": state, "error": "round 2: "
                                                         "not enough replies"}))
        (run_dir / "warnings.jsonl").write_text(
            json.dumps({"where": WHERE_LOAD, "message": NO_NOISE}) + "\n"
            + json.dumps({"where": WHERE_TRAINING, "message": "training diverged"}) + "\n")
        (run_dir / "summary.md").write_text(f"## Warnings\n\n- load: {NO_NOISE}\n")
        return subprocess.CompletedProcess(args, 0)
    return run


def test_fl_shadow_run_ends_with_the_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = load_config(None, TINY)
    monkeypatch.setattr(cli.subprocess, "run", fake_flwr_run(tmp_path / "done", "completed"))
    assert cli._launch(config, tmp_path / "c.yaml", [], tmp_path / "done", resume=False) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-3] == f"- load: {NO_NOISE}"  # the summary's last section
    assert out[-1] == (f"fl-shadow: results in {tmp_path / 'done'} (2 warning(s): see Warnings "
                       "above)")
    monkeypatch.setattr(cli.subprocess, "run", fake_flwr_run(tmp_path / "bad", "failed"))
    assert cli._launch(config, tmp_path / "c.yaml", [], tmp_path / "bad", resume=False) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [f"fl-shadow: warning (load): {NO_NOISE}",
                   "fl-shadow: warning (training): training diverged",
                   ("fl-shadow: run did not complete (state: failed, flwr exit 0): round 2: "
                    "not enough replies")]
