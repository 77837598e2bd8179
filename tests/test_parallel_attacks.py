"""Attacks run as Ray tasks (strategies/parallel_attacks.py) give what the serial path gives.

One local Ray for the module (started by the code under test, as a deployed server would;
~5-10 s), shut down at the end.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from attack_cases import client_update
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.strategy import FedAvg

from attacks import Prior, build_attack
from clients.defended import LocalData
from fl_shadow import flower_keys as keys
from fl_shadow.apps.federation import Federation
from fl_shadow.config import load_config
from fl_shadow.errors import ThreatModelError
from fl_shadow.models import build_model
from fl_shadow.report import RunRecorder
from fl_shadow.threads import WAIT_POLICY_ENV
from fl_shadow.training import LocalTraining
from strategies.attack_hook import AttackHook
from strategies.curious import CuriousServer, RoundClock, UpdateObserver
from strategies.parallel_attacks import (
    APP_DIR,
    AttackJob,
    _make_bootstrap,
    ensure_ray,
    run_attacks,
    task_options,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def local_ray():  # type: ignore[no-untyped-def]
    import ray

    started = ensure_ray()
    yield ray
    if started:
        ray.shutdown()


def _jobs(*, labels_for: tuple[bool, bool] = (False, False)) -> list[AttackJob]:
    one = client_update([2], LocalTraining(lr=0.05, batch_size=1), give_labels=labels_for[0])
    two = client_update([1, 3], LocalTraining(lr=0.05, batch_size=2), seed=1,
                        give_labels=labels_for[1])
    return [AttackJob(0, one.observation, one.prior), AttackJob(1, two.observation, two.prior)]


def test_two_attacks_in_parallel_equal_the_serial_ones(local_ray: object) -> None:
    attack = build_attack("inverting_gradients", {"iterations": 30}, device=CPU, seed=3)
    jobs = _jobs()
    serial = [attack.reconstruct(job.observation, job.prior) for job in jobs]
    parallel = list(run_attacks(attack, jobs, parallel=2, device=CPU))
    assert len(parallel) == 2
    for s, p in zip(serial, parallel):
        assert p.images.shape == s.images.shape
        assert torch.equal(p.images, s.images)
        assert torch.equal(p.labels, s.labels)
        assert (p.loss, p.iterations) == (s.loss, s.iterations)
    # in input order: job 1 reconstructs two images, job 0 one
    assert [r.images.shape[0] for r in parallel] == [1, 2]


def test_an_error_in_a_task_surfaces_as_the_serial_error(local_ray: object) -> None:
    attack = build_attack("inverting_gradients", {"iterations": 5, "require_labels": True},
                          device=CPU, seed=0)
    jobs = _jobs(labels_for=(True, False))  # the second job lacks the labels it needs
    first = attack.reconstruct(jobs[0].observation, jobs[0].prior)
    with pytest.raises(ThreatModelError) as serial:
        attack.reconstruct(jobs[1].observation, jobs[1].prior)
    results = run_attacks(attack, jobs, parallel=2, device=CPU)
    assert torch.equal(next(results).images, first.images)  # the job before it still comes
    with pytest.raises(ThreatModelError) as parallel:
        next(results)
    assert str(parallel.value) == str(serial.value)
    assert "\n" not in str(parallel.value)


def _config(parallel: int):  # type: ignore[no-untyped-def]
    items = ["partition.num_clients=2", "partition.sizes=[2, 3]", "partition.batch_sizes=[2, 3]",
             "strategy.min_fit_clients=2", "strategy.min_available_clients=2",
             "model.width=4", "data.image_size=8", "train.device=cpu", "train.rounds=1",
             "attack.clients=[0, 1]", "attack.params.iterations=15",
             f"attack.parallel={parallel}"]
    return load_config(None, items)


def test_strategy_records_the_same_attack_rows_with_parallel_attacks(
        local_ray: object, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    def build() -> torch.nn.Module:
        return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)

    torch.manual_seed(0)
    global_arrays = [v.numpy() for v in build().state_dict().values()]
    replies = []
    for cid, n in enumerate((2, 3)):
        g = torch.Generator().manual_seed(cid)
        data = LocalData(torch.rand(n, 1, 8, 8, generator=g), torch.arange(n) % 3,
                         np.arange(10 * cid, 10 * cid + n), (0.5,), (0.25,), 3)
        client = Federation(_config(1)).client_for(cid, data, context=None, send_audit=True)
        sent, num, metrics = client.fit(global_arrays, {keys.SERVER_ROUND: 1,
                                                        keys.NUM_ROUNDS: 1})
        replies.append((None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(sent), num,
                                     metrics)))
    rows = {}
    state_keys = list(build().state_dict())
    for parallel in (1, 2):
        config = _config(parallel)
        federation = Federation(config)
        prior = Prior(model_factory=build, image_shape=(1, 8, 8), num_classes=3,
                      mean=(0.5,), std=(0.25,))
        attack = federation.attack()
        assert attack is not None
        hook = AttackHook(attack, prior, selection=config.attack, num_rounds=1,
                          plan_for=federation.plan_for, state_keys=state_keys,
                          label_lookup=None, defense_knowledge=None, device=CPU)
        assert hook.parallel == parallel
        run_dir = tmp_path / f"parallel{parallel}"
        recorder = RunRecorder(run_dir, "", 1)
        strategy = CuriousServer(FedAvg(), clock=RoundClock(1), round_config=lambda r: {},
                                 observer=UpdateObserver(recorder, state_keys, hook=hook),
                                 recorder=recorder, min_fit_clients=2)
        strategy._sent = {1: ndarrays_to_parameters(global_arrays)}
        with caplog.at_level(logging.INFO, logger="strategies.parallel_attacks"):
            strategy.aggregate_fit(1, list(reversed(replies)), [])  # arrival order: any
        assert ("as a Ray task" in caplog.text) == (parallel > 1)
        lines = (run_dir / "privacy.jsonl").read_text().splitlines()
        rows[parallel] = [{k: v for k, v in json.loads(line).items() if k != "attack_seconds"}
                          for line in lines]
    assert [r["client"] for r in rows[2]] == [0, 1]
    assert rows[2] == rows[1]


def test_task_options_reserve_no_cpu_and_share_a_free_gpu() -> None:
    cpu = task_options(CPU, 3, free_gpus=1.0)
    assert (cpu["num_cpus"], cpu["num_gpus"], cpu["max_retries"]) == (0, 0.0, 0)
    env = cpu["runtime_env"]["env_vars"]
    assert env[WAIT_POLICY_ENV] in ("PASSIVE", os.environ.get(WAIT_POLICY_ENV))
    assert "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO" not in env
    assert task_options(torch.device("cuda"), 4, free_gpus=1.0)["num_gpus"] == 0.25
    assert task_options(torch.device("cuda"), 2, free_gpus=0.5)["num_gpus"] == 0.25
    held = task_options(torch.device("cuda"), 2, free_gpus=0.0)  # client actors hold the GPU
    assert held["num_gpus"] == 0.0
    assert held["runtime_env"]["env_vars"]["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] == "0"
    with pytest.raises(ValueError, match="parallel must be >= 1"):
        task_options(CPU, 0, free_gpus=0.0)


def test_the_task_refuses_a_worker_that_imported_another_copy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ray import cloudpickle

    attack = build_attack("inverting_gradients", {"iterations": 3}, device=CPU, seed=0)
    job = _jobs()[0]
    blobs = [cloudpickle.dumps(x) for x in (attack, job.observation, job.prior)]
    task = _make_bootstrap()
    monkeypatch.setattr(sys, "path", list(sys.path))  # the bootstrap edits sys.path
    here = task(APP_DIR, *blobs, 1)  # run in this process, whose copy is APP_DIR's
    assert torch.equal(here.images, attack.reconstruct(job.observation, job.prior).images)
    assert sys.path[0] == APP_DIR
    with pytest.raises(RuntimeError, match="imported attacks from .* not from the server's app"):
        task("/elsewhere/app", *blobs, 1)
