"""Attack speed (issue 17, item 3): Inverting Gradients with restarts one after the other vs
batched, and breaching's ``invertinggradients`` at the same settings.

One client update per image count (the project's default model: ConvNet width 32 with
BatchNorm, 32 px grayscale, 6 classes; one local SGD step, lr 0.05, labels given) is attacked,
interleaved ``--repeats`` times, by

* **sequential**: the project's ``inverting_gradients`` with ``batch_restarts: false``;
* **batched**: the same attack with ``batch_restarts: true`` (all restarts one vmapped
  optimisation, :meth:`attacks.replay.UpdateReplay.batched`);
* **compiled** (with ``--compiled``): ``compile: true`` (one compiled step function, restarts
  one after the other); its whole time counts, and separately the time after the first,
  compiling, step;
* **breaching** (when ``breaching`` is installed: ``pip install -e '.[bench]'``): its
  ``invertinggradients`` attacker (signed Adam, step decay, box, cosine cost and cosine
  restart scoring), given the same model, the same gradient (the observed update divided by
  ``-lr``), the same labels, the same starting images (its initialisation hook returns the
  project's starts, restart by restart), the same iterations, lr and restarts.

Adaptation: breaching's total-variation term is a 3-channel convolution with zero padding
(border differences and an eps inside), which neither fits a 1-channel model nor equals the
project's TV; its regularizer list is given the project's TV
(:func:`attacks.objectives.total_variation` times ``tv_weight``) instead, so both minimise
the same objective. Breaching returns the best iterate of each restart by objective, the
project the last one; the quality columns show the effect.

Reported per method: restart-iterations per second (``restarts * iterations / seconds``, the
whole ``reconstruct`` call), its ratio to breaching's and to the sequential path in the same
repeat (the machine may be shared: ratios of interleaved runs are the numbers to read), and
the PSNR of the final reconstruction against the true images (computed here, outside attack
code; the better slot pairing for several images). Writes
``experiments/results/attack_speed_cpu.json``.

    python experiments/attack_speed_benchmark.py [--images 1 4] [--restarts 4]
        [--iterations 300] [--repeats 2]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

# First, before anything loads torch: OMP_WAIT_POLICY=PASSIVE (fl_shadow.threads).
from fl_shadow.threads import set_torch_threads  # isort: skip

import torch

from attacks import Observation, Prior, build_attack
from attacks.objectives import total_variation
from fl_shadow.defenses import Defense
from fl_shadow.models import ConvNet
from fl_shadow.sample_images import sample_images
from fl_shadow.training import LocalTraining, train_locally

RESULTS = Path(__file__).resolve().parent / "results"
SIZE, CLASSES, WIDTH, CHANNELS = 32, 6, 32, 1
MEAN, STD = (0.5,), (0.25,)
CLIENT_LR = 0.05


def factory() -> ConvNet:
    return ConvNet(CHANNELS, CLASSES, width=WIDTH, image_size=SIZE)


def true_images(count: int) -> torch.Tensor:
    """``(count, 1, SIZE, SIZE)`` in [0, 1]: central squares of scikit-image samples."""
    return sample_images(count, SIZE)


def observe(truth: torch.Tensor, seed: int = 0) -> tuple[Observation, Prior]:
    """One local SGD step of the client on ``truth``, packaged as the server sees it."""
    torch.manual_seed(seed)
    model = factory()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    labels = torch.arange(len(truth)) % CLASSES
    plan = LocalTraining(lr=CLIENT_LR, batch_size=len(truth), local_steps=1)
    x = (truth - MEAN[0]) / STD[0]
    train_locally(model, x, labels, plan, defense=Defense(), ctx=SimpleNamespace(step=0),
                  generator=torch.Generator().manual_seed(seed))
    observation = Observation(global_state=global_state, client_state=model.state_dict(),
                              num_examples=len(truth), training=plan, num_images=len(truth),
                              labels=labels)
    prior = Prior(model_factory=factory, image_shape=(CHANNELS, SIZE, SIZE),
                  num_classes=CLASSES, mean=MEAN, std=STD)
    return observation, prior


def psnr(rec: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean PSNR (dB) over images under the best slot pairing (the scorer's job, not the
    attack's)."""
    def one(a: torch.Tensor, b: torch.Tensor) -> float:
        return 10 * math.log10(1.0 / max(float(((a - b) ** 2).mean()), 1e-12))
    n = len(truth)
    return max(statistics.mean(one(rec[i], truth[j]) for j, i in enumerate(perm))
               for perm in itertools.permutations(range(n)))


def ig_params(args: argparse.Namespace, method: str) -> dict[str, Any]:
    return {"iterations": args.iterations, "restarts": args.restarts, "lr": args.lr,
            "tv_weight": args.tv_weight, "batch_restarts": method == "batched",
            "compile": method == "compiled", "progress": False}


def starts(args: argparse.Namespace, observation: Observation, prior: Prior) -> list[torch.Tensor]:
    """The project attack's starting images (what it draws from its seed), for breaching."""
    generator = torch.Generator().manual_seed(args.seed)
    shape = (observation.num_images, *prior.image_shape)
    return [torch.randn(shape, generator=generator) for _ in range(args.restarts)]


def run_project(args, observation, prior, truth, method: str) -> dict[str, float]:
    attack = build_attack("inverting_gradients", ig_params(args, method), device="cpu",
                          seed=args.seed)
    start = time.perf_counter()
    rec = attack.reconstruct(observation, prior)
    seconds = time.perf_counter() - start
    row = {"seconds": seconds, "its": args.restarts * args.iterations / seconds,
           "psnr": psnr(rec.images, truth), "matching_cost": rec.loss,
           "best_restart": rec.info["best_restart"]}
    if "compile_seconds" in rec.info:  # the first (compiling) step left out
        row["compile_seconds"] = rec.info["compile_seconds"]
        row["its_after_compile"] = ((args.restarts * args.iterations - 1)
                                    / (seconds - rec.info["compile_seconds"]))
    return row


class _ProjectTV(torch.nn.Module):
    """The project's TV term as a breaching regularizer (``initialize`` + ``forward``)."""

    def __init__(self, weight: float) -> None:
        super().__init__()
        self.weight = weight

    def initialize(self, *args: object, **kwargs: object) -> None:
        pass

    def forward(self, tensor: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return self.weight * total_variation(tensor)


class _Metadata(dict):
    """breaching reads its metadata both as attributes and as items."""

    __getattr__ = dict.__getitem__


def run_breaching(args, observation, prior, truth) -> dict[str, float]:
    import logging

    import breaching

    logging.getLogger("breaching").setLevel(logging.WARNING)
    cfg = breaching.get_attack_config("invertinggradients", overrides=[
        f"optim.max_iterations={args.iterations}", f"optim.step_size={args.lr}",
        f"restarts.num_trials={args.restarts}", f"optim.callback={args.iterations * 10}"])
    model = factory()
    model.load_state_dict(observation.global_state)
    attacker = breaching.attacks.prepare_attack(model, torch.nn.CrossEntropyLoss(), cfg,
                                                {"dtype": torch.float,
                                                 "device": torch.device("cpu")})
    attacker.regularizers = [_ProjectTV(args.tv_weight)]
    queue = iter(starts(args, observation, prior))

    def initial(shape: list[int]) -> torch.Tensor:
        candidate = next(queue).clone().reshape(shape)
        candidate.requires_grad = True
        candidate.grad = torch.zeros_like(candidate)
        return candidate

    attacker._initialize_data = initial
    update = observation.parameter_update(model)
    metadata = _Metadata(shape=prior.image_shape, mean=MEAN, std=STD, modality="vision",
                         num_data_points=observation.num_images,
                         labels=torch.as_tensor(observation.labels), local_hyperparams=None)
    payload = [{"parameters": [p.detach() for p in model.parameters()], "buffers": None,
                "metadata": metadata}]
    shared = [{"gradients": [u / -CLIENT_LR for u in update], "buffers": None,
               "metadata": metadata}]
    start = time.perf_counter()
    reconstructed, _stats = attacker.reconstruct(payload, shared, {}, dryrun=False)
    seconds = time.perf_counter() - start
    images = (reconstructed["data"].detach() * STD[0] + MEAN[0]).clamp(0, 1)
    return {"seconds": seconds, "its": args.restarts * args.iterations / seconds,
            "psnr": psnr(images, truth)}


def breaching_available() -> str | None:
    """None when breaching imports, else why not."""
    try:
        import breaching  # noqa: F401
    except ImportError as exc:
        return f"breaching is not installed ({exc}); pip install -e '.[bench]'"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--tv-weight", type=float, default=3e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-breaching", action="store_true")
    parser.add_argument("--compiled", action="store_true",
                        help="also time compile: true (restarts one after the other)")
    parser.add_argument("--out", type=Path, default=RESULTS / "attack_speed_cpu.json")
    args = parser.parse_args()
    set_torch_threads(args.threads)
    skipped = "--no-breaching was given" if args.no_breaching else breaching_available()
    methods = (["sequential", "batched"] + (["compiled"] if args.compiled else [])
               + ([] if skipped else ["breaching"]))

    results: dict[str, Any] = {}
    for count in args.images:
        truth = true_images(count)
        observation, prior = observe(truth, seed=args.seed)
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
        for repeat in range(args.repeats):
            order = methods if repeat % 2 == 0 else methods[::-1]  # interleaved, alternating
            for method in order:
                if method == "breaching":
                    row = run_breaching(args, observation, prior, truth)
                else:
                    row = run_project(args, observation, prior, truth, method)
                runs[method].append(row)
                after = (f" ({row['its_after_compile']:.1f} after a "
                         f"{row['compile_seconds']:.1f} s compiling step)"
                         if "compile_seconds" in row else "")
                print(f"{count} image(s), repeat {repeat + 1}, {method}: {row['its']:.1f} "
                      f"restart-it/s{after}, PSNR {row['psnr']:.2f} dB", flush=True)
        summary: dict[str, Any] = {}
        for method in methods:
            summary[method] = {
                "restart_its_per_s": statistics.median(r["its"] for r in runs[method]),
                "psnr_db": statistics.mean(r["psnr"] for r in runs[method]),
                "runs": runs[method]}
            if method == "compiled":
                summary[method]["restart_its_per_s_after_compile"] = statistics.median(
                    r["its_after_compile"] for r in runs[method])
        for reference in ["sequential"] + ([] if skipped else ["breaching"]):
            for method in methods:
                if method != reference:
                    ratios = [a["its"] / b["its"]
                              for a, b in zip(runs[method], runs[reference], strict=True)]
                    summary[method][f"speedup_vs_{reference}"] = statistics.median(ratios)
                    summary[method][f"speedup_vs_{reference}_per_repeat"] = ratios
                    if method == "compiled":
                        after = [a["its_after_compile"] / b["its"]
                                 for a, b in zip(runs[method], runs[reference], strict=True)]
                        summary[method][f"speedup_vs_{reference}_after_compile"] = (
                            statistics.median(after))
        results[f"{count}_images"] = summary

    out = {
        "config": {"model": f"ConvNet(width={WIDTH}, norm=batch)", "image_size": SIZE,
                   "channels": CHANNELS, "classes": CLASSES, "client_lr": CLIENT_LR,
                   "local_steps": 1, "labels": "given", "iterations": args.iterations,
                   "restarts": args.restarts, "lr": args.lr, "tv_weight": args.tv_weight,
                   "cost": "cosine", "signed": True, "boxed": True,
                   "lr_schedule": "multistep", "seed": args.seed, "images": args.images,
                   "breaching_tv": "replaced by the project's total_variation (same "
                                   "objective)"},
        "threads": torch.get_num_threads(), "repeats": args.repeats,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "cpus": os.cpu_count(), "torch": torch.__version__,
                    "python": platform.python_version(),
                    "load_average_at_end": os.getloadavg()},
        "breaching": skipped or "breaching " + __import__("importlib.metadata").metadata
        .version("breaching"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    for key, summary in results.items():
        line = ", ".join(f"{m} {s['restart_its_per_s']:.1f} it/s {s['psnr_db']:.1f} dB"
                         + "".join(f", x{v:.2f} {k[8:]}" for k, v in s.items()
                                   if k.startswith("speedup") and not k.endswith("repeat"))
                         for m, s in summary.items())
        print(f"{key}: {line}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
