"""Run several attacks of one round at the same time, as Ray tasks (``attack.parallel > 1``).

:func:`run_attacks` takes the round's attack jobs (observation and prior of one attacked update
each), keeps at most ``parallel`` of them running as Ray tasks and yields the reconstructions
in the jobs' order, so the caller scores and records them in a fixed order while later attacks
still run. Readings chosen, each checked in flwr 1.41 / ray 2.55:

* **Which Ray.** In ``flwr run`` simulation the ServerApp is a thread of the process that drives
  Flower's simulation engine, and that process has already called ``ray.init``
  (``flwr/simulation/run_simulation.py``: ``run_serverapp_th`` next to ``vce.start_vce``;
  ``flwr/server/superlink/fleet/vce/backend/raybackend.py``: ``RayBackend.init_ray``), so the
  attacks join Flower's Ray. Without a running Ray (a deployed ServerApp) :func:`ensure_ray`
  starts a private local one (``address="local"``, no dashboard, usage stats off) once and
  keeps it for the life of the server process: Ray is already a dependency (``flwr[simulation]``)
  and the start (~6 s on 2 cores) is paid once, not per round.
* **No CPU reservation.** Flower's ``BasicActorPool`` creates as many client actors as the
  CPUs allow (``client-resources-num-cpus`` each) and keeps them, with their CPUs reserved,
  until the simulation ends, also while they are idle during aggregation. A task asking Ray for
  a CPU would wait for a slot that never frees, so every task asks for ``num_cpus=0`` and the
  concurrency limit is enforced here instead (``ray.wait``, at most ``parallel`` in flight).
* **Same numbers as serial.** Ray forces ``OMP_NUM_THREADS=1`` in a worker that reserved no
  CPU, and torch's CPU kernels reduce in an order that depends on the thread count (IG's
  loss after 100 iterations differed in the 7th digit between 1 and 2 threads, the images after
  200). Each task therefore sets torch's thread count
  (:func:`fl_shadow.threads.set_torch_threads`) to the count the attack would have had in the
  calling thread, so a task computes exactly what the serial path computes (the attacks seed
  their own generators). Several such tasks can ask for more threads than there are cores: the
  tasks' workers start with ``OMP_WAIT_POLICY=PASSIVE`` (unless the environment sets it;
  :func:`fl_shadow.threads.child_env`), which changes how idle OpenMP threads wait, not what
  they compute: two 2-thread IG attacks (200 iterations, 4 images, 32 px) side by side on 2
  cores that other jobs also used took 271 s each with the default busy-waiting, 9 s with
  passive waiting.
* **GPU.** A CUDA attack asks Ray for ``1/parallel`` of the free GPU capacity, so the tasks
  share one GPU as the serial attacks do. Flower's actors hold their GPU share
  (``client-resources-num-gpus``) for good as well; when no GPU capacity is free the tasks
  reserve none and keep the server's CUDA devices visible
  (``RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=0``; Ray otherwise hides every GPU from a task that
  reserved none), like the ServerApp thread, which uses the GPU outside Ray's accounting.
* **Imports in the worker.** A task's worker must import this package, ``attacks`` and
  ``fl_shadow``, and the same copy the server runs. Flower puts the installed app's folder
  (``~/.flwr/apps/<fab>``) on ``sys.path`` in its own processes and in its Ray job's
  ``PYTHONPATH``, but Ray puts the driver's working directory *ahead* of ``PYTHONPATH`` in
  every worker (``JobConfig._py_driver_sys_path``): in a real ``flwr run`` started from the
  project folder, a plain task imported the working tree, not the app (seen with an editable
  install; without one, or from another folder, it fails or runs other code). So the task
  function is a bootstrap pickled by value (:func:`_make_bootstrap`): it puts the folder this
  module was loaded from first on ``sys.path`` and only then unpickles the attack, observation
  and prior, which travel as bytes; it refuses to run when the worker had already imported
  the project from elsewhere.
* **Errors.** An exception raised by an attack reaches the caller as the attack's own exception
  (e.g. :class:`~fl_shadow.errors.ThreatModelError` with the serial path's one-line message),
  not as Ray's wrapper, and only after the jobs before it were yielded, as in a serial loop.
  Jobs after it are cancelled.
* **One job** runs in the calling thread: a Ray task would add a worker start and nothing else.

Progress: one log line when an attack is submitted and one when it finishes (round, client,
seconds). The attacks' own per-iteration progress stays in the workers, whose logging is not
configured, and is not shown.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fl_shadow.threads import child_env
from fl_shadow.threat_model import Attack, Observation, Prior, Reconstruction

log = logging.getLogger(__name__)

APP_DIR = str(Path(__file__).resolve().parent.parent)


@dataclass(frozen=True)
class AttackJob:
    """One attacked update: whose it is (for the log lines) and what the attack receives."""

    client_id: int
    observation: Observation
    prior: Prior


def worker_env(*, override_gpu_visibility: bool = False) -> dict[str, str]:
    """Environment variables an attack task's worker starts with (see the module docstring)."""
    env = child_env()
    if override_gpu_visibility:
        env["RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO"] = "0"
    return env


def task_options(device: torch.device, parallel: int, *, free_gpus: float) -> dict[str, Any]:
    """Ray options of one attack task.

    Args:
        device: where the attack runs (the attack hook's device).
        parallel: how many tasks run at once.
        free_gpus: GPU capacity Ray reports free now (``ray.available_resources()``).

    Returns:
        ``num_cpus=0`` always; on CUDA ``num_gpus = min(free_gpus, 1) / parallel`` when Ray has
        GPU capacity free, else ``num_gpus=0`` with the server's devices left visible.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    gpu = device.type == "cuda"
    share = min(free_gpus, 1.0) / parallel if gpu else 0.0
    if gpu and share <= 0:
        log.warning("attack.parallel: Ray has no free GPU capacity (the client actors reserve "
                    "it); the attack tasks use the server's GPU without reserving a share")
    return {"num_cpus": 0, "num_gpus": share, "max_retries": 0,
            "runtime_env": {"env_vars": worker_env(override_gpu_visibility=gpu and share <= 0)}}


def ensure_ray() -> bool:
    """Start a private local Ray unless one runs in this process; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    log.info("attack.parallel: starting a local Ray for the attack tasks")
    with warnings.catch_warnings():
        # Ray's notice that a later release stops hiding GPUs from tasks that reserve none:
        # task_options sets that behaviour explicitly where it matters.
        warnings.filterwarnings("ignore", category=FutureWarning, message="Tip: In future")
        ray.init(address="local", include_dashboard=False)
    return True


def _make_bootstrap() -> Callable[..., Reconstruction]:
    """The Ray task's function, defined in a closure so that Ray pickles it by value.

    A module-level function would be pickled by reference, and unpickling it in the worker
    would import this package through the worker's ``sys.path`` before the task could fix it.
    The bootstrap uses nothing from the project until it has put ``app_dir`` first on
    ``sys.path``; the job's objects arrive as bytes and are unpickled only then.
    """

    def attack_task(app_dir: str, attack_blob: bytes, observation_blob: bytes,
                    prior_blob: bytes, num_threads: int) -> Reconstruction:
        import importlib
        import pickle
        import sys

        if app_dir in sys.path:
            sys.path.remove(app_dir)
        sys.path.insert(0, app_dir)
        attack = pickle.loads(attack_blob)
        for package in ("attacks", "fl_shadow", "strategies"):
            origin = getattr(sys.modules.get(package), "__file__", None)
            if origin is not None and not origin.startswith(app_dir + "/"):
                raise RuntimeError(f"attack task: this Ray worker imported {package} from "
                                   f"{origin}, not from the server's app folder {app_dir}")
        # The project's thread rule, from the app folder just checked (an import statement here
        # would be a function-level project import, which the layering test forbids).
        importlib.import_module("fl_shadow.threads").set_torch_threads(num_threads)
        return attack.reconstruct(pickle.loads(observation_blob), pickle.loads(prior_blob))

    return attack_task


def _describe(job: AttackJob, attack: Attack) -> str:
    o = job.observation
    return (f"round {o.server_round}: attacking client {job.client_id} ({attack.name}, "
            f"{o.num_images} image(s), {o.num_local_steps} local step(s))")


def run_attacks(attack: Attack, jobs: Sequence[AttackJob], *, parallel: int,
                device: torch.device, num_threads: int | None = None
                ) -> Iterator[Reconstruction]:
    """Run ``jobs`` with at most ``parallel`` at once; yield reconstructions in job order.

    Args:
        attack: the attack (pickled once into Ray's object store).
        jobs: the round's attacked updates, in the order results are wanted.
        parallel: the most tasks running at once (``attack.parallel``).
        device: where the attack runs (decides the tasks' GPU share).
        num_threads: torch threads per task; None = this thread's ``torch.get_num_threads()``,
            which is what the serial path would use.

    Yields:
        One :class:`~attacks.base.Reconstruction` per job, in order, each as soon as it and
        every job before it have finished.

    Raises:
        The first failing job's own exception (in job order), after the jobs before it were
        yielded; ``RuntimeError`` naming the round and client when a worker died.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    threads = num_threads if num_threads is not None else torch.get_num_threads()
    if len(jobs) < 2 or parallel == 1:
        for job in jobs:
            log.info("%s", _describe(job, attack))
            yield attack.reconstruct(job.observation, job.prior)
        return

    import ray
    from ray import cloudpickle

    ensure_ray()
    options = task_options(device, parallel,
                           free_gpus=float(ray.available_resources().get("GPU", 0.0)))
    remote = ray.remote(_make_bootstrap()).options(**options)
    attack_ref = ray.put(cloudpickle.dumps(attack))
    prior_refs: dict[int, Any] = {}
    pending: dict[Any, tuple[int, float]] = {}  # ref -> (job index, submit time)
    done: dict[int, Reconstruction] = {}
    failed: dict[int, BaseException] = {}
    next_submit = next_yield = 0
    try:
        while next_yield < len(jobs):
            first_failure = min(failed, default=len(jobs))
            while len(pending) < parallel and next_submit < min(len(jobs), first_failure):
                job = jobs[next_submit]
                if id(job.prior) not in prior_refs:
                    prior_refs[id(job.prior)] = ray.put(cloudpickle.dumps(job.prior))
                log.info("%s as a Ray task (%d of %d, at most %d at once)", _describe(job, attack),
                         next_submit + 1, len(jobs), parallel)
                ref = remote.remote(APP_DIR, attack_ref, cloudpickle.dumps(job.observation),
                                    prior_refs[id(job.prior)], threads)
                pending[ref] = (next_submit, time.perf_counter())
                next_submit += 1
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
            if next_yield in failed:
                raise failed[next_yield]
            if next_yield == len(jobs):
                break
            ready, _ = ray.wait(list(pending), num_returns=1)
            index, started = pending.pop(ready[0])
            job = jobs[index]
            try:
                done[index] = ray.get(ready[0])
            except ray.exceptions.RayError as err:
                failed[index] = _original(err, job)
                # A serial loop would never have started the jobs after a failing one.
                later = [ref for ref, (i, _) in pending.items() if i > index]
                _cancel(ray, later)
                for ref in later:
                    del pending[ref]
                continue
            log.info("round %d: client %d attacked in %.1f s (attack %.1f s)",
                     job.observation.server_round, job.client_id,
                     time.perf_counter() - started, done[index].seconds)
    finally:
        _cancel(ray, list(pending))


def _original(err: Exception, job: AttackJob) -> BaseException:
    """The exception the attack raised, without Ray's wrapper (which is chained as its cause,
    so the worker's traceback still prints); a one-line ``RuntimeError`` when the worker died
    or the exception could not be sent back."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and not type(cause).__module__.startswith("ray."):
        cause.__cause__ = err
        return cause
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return RuntimeError(f"round {job.observation.server_round} client {job.client_id}: the "
                        f"attack's Ray task failed ({type(err).__name__}): {first_line}")


def _cancel(ray: Any, refs: list[Any]) -> None:
    """Stop the tasks behind ``refs`` and collect what they left."""
    if not refs:
        return
    # force=True kills the worker: a non-forced cancel only interrupts Python between
    # bytecodes, and an attack spends its time inside torch kernels.
    for ref in refs:
        try:
            ray.cancel(ref, force=True)
        except Exception:  # an already finished task: nothing to stop
            pass
    # Fetch each result once: Ray logs an "unhandled error" for every failed task whose
    # result is dropped unread, which would put stray tracebacks under the real error.
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
    for ref in ready:
        try:
            ray.get(ref)
        except Exception:
            pass


__all__ = ["AttackJob", "ensure_ray", "run_attacks", "task_options", "worker_env"]
