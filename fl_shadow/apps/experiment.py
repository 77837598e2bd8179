"""Load an experiment and check everything about it before anything runs.

:func:`load_experiment` is what ``fl-shadow validate``, ``fl-shadow run``, the ServerApp and
every experiment script call: the YAML (with its ``base:`` chain and the overrides) becomes an
:class:`~fl_shadow.config.ExperimentConfig` (types, ranges, rules between sections), and then
:func:`check_experiment` resolves every component and checks what the config alone cannot:

* every name is registered (dataset, model, strategy, defense, attack) and every ``params``
  block is valid for its component;
* each component's rules with the rest of the experiment (``StrategySpec.check``,
  ``DefenseSpec.check``, the attack's threat-model needs against ``attack.labels`` and
  ``attack.bn_statistics``, ``attack.max_images`` against the attack's ceiling);
* the machine: ``train.device: cuda`` and GPU shares need CUDA, CPU shares at most its cores;
  ``output_dir`` is (or can become) a writable folder;
* the data (``data=True``): ``data.path`` exists and is the kind the dataset reads; the
  dataset's memory (``images x channels x image_size**2`` float32, estimated from its files
  before anything loads) and the model's weights (counted on PyTorch's meta device) fit in
  the machine's available memory; the dataset loads, its test split is not empty, the
  partition fits it (every client's share exists), and a generative component has public
  images to learn from. Weak-but-legal data is a warning: a small test split, overall or for
  a class (below :data:`MIN_TEST_IMAGES_PER_CLASS`, naming the classes), few public images
  for a generator (below :data:`FEW_PUBLIC_IMAGES`); a run records them in its results
  folder (:func:`fl_shadow.diagnostics.capture_warnings`).

Every failure is one :class:`~fl_shadow.errors.ConfigError` line naming the dotted key. The
result, :class:`Components`, holds the specs and the validated params, so the federation
builder resolves nothing twice.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import attacks  # noqa: F401  (registers the attacks)
import strategies  # noqa: F401  (registers the strategies)
from attacks import ATTACKS, AttackSpec
from fl_shadow.config import ExperimentConfig, load_config
from fl_shadow.data import DATASETS, DatasetSpec, load_dataset, partition_indices
from fl_shadow.defenses import DEFENSES, DefenseSpec
from fl_shadow.diagnostics import sparse_classes
from fl_shadow.errors import ConfigError, DataError
from fl_shadow.generative.pretrain import MIN_PUBLIC_IMAGES
from fl_shadow.generative.public import cached_generator_quality
from fl_shadow.models import MODELS, ModelSpec
from fl_shadow.report import check_writable_folder, one_line
from fl_shadow.threat_model import ThreatModelNeeds
from strategies import STRATEGIES, StrategySpec

log = logging.getLogger(__name__)

#: Below this many public images a generator learns them by heart (a warning at load).
FEW_PUBLIC_IMAGES = 16
#: Below this many test images a class's share of macro-F1 rests on a handful of predictions
#: (a warning at load naming the classes).
MIN_TEST_IMAGES_PER_CLASS = 5
#: Classes named in that warning; the rest are counted.
MAX_CLASSES_NAMED = 10


@dataclass(frozen=True)
class Components:
    """Every configured component: its spec and its validated params.

    Attributes:
        dataset, model: the data and model specs.
        strategy, strategy_params: ``strategy.name`` and ``strategy.params``.
        defense, defense_params: ``defense.name`` and ``defense.params``.
        attack, attack_params: ``attack.name`` and ``attack.params``.
        attack_needs: what the attack asks of the threat model with these params.
    """

    dataset: DatasetSpec
    model: ModelSpec
    strategy: StrategySpec
    strategy_params: Any
    defense: DefenseSpec
    defense_params: Any
    attack: AttackSpec
    attack_params: Any
    attack_needs: ThreatModelNeeds

    @property
    def needs_generator(self) -> bool:
        """The defense or the attack uses the public-data generator."""
        return self.defense.needs_generator or (self.attack.reconstructs
                                                and self.attack_needs.generator is not None)

    def summary(self) -> str:
        """The components in one line (their own ``summary()``), for the log at start."""
        attack = self.attack.build(self.attack_params, device="cpu", seed=0).summary()
        return (f"strategy {self.strategy.summary}{_params_text(self.strategy_params)}, "
                f"defense {self.defense.build(self.defense_params).summary()}, "
                f"attack {attack}")


def load_experiment(path: str | Path | None = None, overrides: Iterable[str] = (), *,
                    data: bool = True) -> tuple[ExperimentConfig, Components]:
    """Read a config (see :func:`fl_shadow.config.load_config`) and check it whole.

    Args:
        path: YAML file or shipped config name; None for the shipped default.
        overrides: dotted ``key=value`` items.
        data: also load the dataset and check the partition against it.

    Raises:
        ConfigError: the first problem, one line naming the key or the file.
    """
    config = load_config(path, overrides)
    return config, check_experiment(config, data=data)


def resolve_components(config: ExperimentConfig) -> Components:
    """Resolve every name and validate every ``params`` block (no machine or data checks)."""
    dataset = DATASETS.get(config.data.dataset)
    model = MODELS.get(config.model.name)
    strategy = STRATEGIES.get(config.strategy.name)
    strategy_params = strategy.parse_params(config.strategy.params)
    defense = DEFENSES.get(config.defense.name)
    defense_params = defense.parse_params(config.defense.params)
    attack = ATTACKS.get(config.attack.name)
    attack_params = attack.parse_params(config.attack.params)
    return Components(dataset=dataset, model=model, strategy=strategy,
                      strategy_params=strategy_params, defense=defense,
                      defense_params=defense_params, attack=attack, attack_params=attack_params,
                      attack_needs=attack.needs(attack_params))


def check_experiment(config: ExperimentConfig, *, data: bool = True) -> Components:
    """Everything :func:`load_experiment` checks beyond the config's own rules.

    Raises:
        ConfigError: naming the key.
    """
    c = resolve_components(config)
    c.dataset.check_path(config.data.path)
    c.dataset.check_options(config.data)
    c.model.check(norm=config.model.norm)
    c.strategy.check(c.strategy_params, config)
    c.defense.check(c.defense_params, config)
    _check_attack(config, c)
    _check_machine(config)
    check_writable_folder(config.output_dir, "output_dir")
    if data:
        _check_data(config, c)
    return c


def _check_attack(config: ExperimentConfig, c: Components) -> None:
    a = config.attack
    if not c.attack.reconstructs:
        return
    if a.max_images > c.attack.max_images:
        raise ConfigError(f"attack.max_images: expected at most {c.attack.max_images} "
                          f"({a.name} is meant for batches up to {c.attack.max_images} images), "
                          f"got {a.max_images}")
    needs = c.attack_needs
    if needs.labels and a.labels != "given":
        raise ConfigError(f"attack.labels: {a.name} needs the labels ({needs.labels}) but the "
                          "threat model withholds them; set attack.labels: given or change "
                          "that setting")
    if needs.bn_statistics and a.bn_statistics == "withheld" and config.model.norm == "batch":
        raise ConfigError(f"attack.bn_statistics: {a.name} needs the clients' BatchNorm "
                          f"statistics ({needs.bn_statistics}) but the threat model withholds "
                          "them; set attack.bn_statistics: given or change that setting")
    if a.adaptive and c.defense.attacker_model is None:
        warnings.warn(f"attack.adaptive: defense {c.defense.name} has no public model (its "
                      "output depends on the clients' private draws, keys or state); the "
                      "attacker runs as if undefended", stacklevel=3)
    if config.strategy.flower_dp.mode == "local_dp" and a.adaptive:
        warnings.warn("attack.adaptive: Flower's LocalDpMod is not modelled by the adaptive "
                      "attacker (its noise has mean 0)", stacklevel=3)


def _check_machine(config: ExperimentConfig) -> None:
    cuda = torch.cuda.is_available()
    if config.train.device == "cuda" and not cuda:
        raise ConfigError("train.device: expected a device this machine has; 'cuda' asked, no "
                          "CUDA device is available (use auto or cpu)")
    if config.simulation.num_gpus_per_client > 0 and not cuda:
        raise ConfigError(f"simulation.num_gpus_per_client: expected 0 on a machine without "
                          f"CUDA, got {config.simulation.num_gpus_per_client}")
    cores = os.cpu_count() or 1
    if config.simulation.num_cpus_per_client > cores:
        raise ConfigError(f"simulation.num_cpus_per_client: expected at most this machine's "
                          f"{cores} cores (a larger share never schedules a client), got "
                          f"{config.simulation.num_cpus_per_client:g}")


def available_memory_bytes() -> int | None:
    """Memory this machine can give a new run now (``MemAvailable`` of /proc/meminfo); None
    where the kernel does not say."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _size(n: int) -> str:
    """Bytes in the largest unit of GiB, MiB, KiB they fill (``3.1 MiB``)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _check_data(config: ExperimentConfig, c: Components) -> None:
    where = config.data.path or config.data.dataset
    try:
        need = c.dataset.memory(config.data) if c.dataset.memory is not None else None
    except (ConfigError, DataError):
        raise
    except (OSError, ValueError) as exc:
        raise DataError(f"data: {where}: could not be read ({type(exc).__name__}: "
                        f"{one_line(str(exc))})") from None
    available = available_memory_bytes()
    if need is not None and available is not None and need.bytes > available:
        raise ConfigError(f"data: the dataset needs about {_size(need.bytes)} in memory "
                          f"({need.describe()}), more than the {_size(available)} this machine "
                          "has available (MemAvailable); lower data.image_size or "
                          "data.channels, or use fewer images")
    try:
        splits = load_dataset(config.data, seed=config.seed)
    except (ConfigError, DataError):
        raise
    except (OSError, ValueError, RuntimeError, MemoryError) as exc:
        raise DataError(f"data: {where}: could not be loaded ({type(exc).__name__}: "
                        f"{one_line(str(exc))})") from None
    _check_model_memory(config, c, splits)
    if len(splits.test) == 0:
        raise ConfigError(f"data: {config.data.dataset} has an empty test split, so the "
                          "global model cannot be evaluated (raise data.test_fraction or add "
                          "test images)")
    # Every client's share of the train split exists (sizes vs the data, clients vs images).
    partition_indices(splits.train.labels, config.partition, seed=config.seed)
    if len(splits.test) < 2 * splits.num_classes:
        warnings.warn(f"data: the test split holds {len(splits.test)} images for "
                      f"{splits.num_classes} classes; accuracy and macro-F1 will be coarse",
                      stacklevel=3)
    short = sparse_classes(splits.test.labels, splits.class_names,
                           minimum=MIN_TEST_IMAGES_PER_CLASS)
    if short:
        warnings.warn(f"data: the test split holds fewer than {MIN_TEST_IMAGES_PER_CLASS} "
                      f"images of {len(short)} of {splits.num_classes} classes "
                      f"({_class_counts_text(short)}); their share of macro-F1 rests on a "
                      "handful of predictions (raise data.test_fraction)", stacklevel=3)
    if c.needs_generator:
        public = len(splits.public)
        if public < MIN_PUBLIC_IMAGES:
            user = (f"defense {c.defense.name}" if c.defense.needs_generator
                    else f"attack {c.attack.name}")
            held = "no public split" if public == 0 else f"{public} public image"
            raise ConfigError(f"data: {config.data.dataset} has {held}, and {user} needs a "
                              f"generator trained on at least {MIN_PUBLIC_IMAGES} public "
                              "images (raise data.public_fraction or add public images)")
        if public < FEW_PUBLIC_IMAGES:
            warnings.warn(f"data: the generator learns from {public} public images only; it "
                          "will reproduce them rather than the domain", stacklevel=3)
        quality = cached_generator_quality(config, splits)
        for message in quality.warnings() if quality is not None else ():
            warnings.warn(message, stacklevel=3)


def _class_counts_text(counts: list[tuple[str, int]]) -> str:
    """``glioma: 2, meningioma: 0`` (the first :data:`MAX_CLASSES_NAMED`, then how many more)."""
    named = ", ".join(f"{name}: {n}" for name, n in counts[:MAX_CLASSES_NAMED])
    more = len(counts) - MAX_CLASSES_NAMED
    return named + (f", and {more} more" if more > 0 else "")


#: Copies of the model's numbers a run holds at once: the global model, a client's model,
#: its gradient and its optimizer's state (activations come on top and are not counted).
MODEL_COPIES = 4


def _check_model_memory(config: ExperimentConfig, c: Components, splits: Any) -> None:
    """Refuse a model whose weights alone would not fit, before any is allocated."""
    m = config.model
    numbers = c.model.parameter_count(in_channels=splits.image_shape[0],
                                      num_classes=splits.num_classes,
                                      image_size=splits.image_shape[1], width=m.width,
                                      norm=m.norm)
    need, available = numbers * 4 * MODEL_COPIES, available_memory_bytes()
    if available is not None and need > available:
        raise ConfigError(f"model: {m.name} at {splits.image_shape[1]} px (model.width "
                          f"{m.width}) has {numbers:,} weights, about {_size(need)} for "
                          f"training ({MODEL_COPIES} float32 copies), more than the "
                          f"{_size(available)} this machine has available (MemAvailable); "
                          "lower model.width or data.image_size")


def _params_text(params: Any) -> str:
    """`` (a=1, b=2)`` for a params dataclass, nothing when it has no fields."""
    values = dataclasses.asdict(params)
    return f" ({', '.join(f'{k}={v!r}' for k, v in values.items())})" if values else ""


__all__ = ["Components", "check_experiment", "load_experiment", "resolve_components"]
