"""Experiment config: YAML -> frozen, typed, validated dataclasses.

One YAML file describes one experiment (see ``experiments/configs/default.yaml``). Sections map
to the dataclasses below; every key is checked against its declared type and range, unknown keys
are rejected, and YAML integers are accepted where floats are expected. Errors are
:class:`~fl_shadow.errors.ConfigError` with a one-line message naming the dotted key::

    train.lr: expected a number > 0, got -0.1

Overrides use the same dotted keys with YAML values (``train.rounds=5``,
``attack.rounds=[1,5]``), so the command line and the file speak one language.

Component parameters (``defense.params``, ``attack.params``) are validated by the component's
own params dataclass, named in the registry, so each defense/attack owns its keys and defaults.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from fl_shadow.errors import ConfigError

T = TypeVar("T")

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "experiments" / "configs" / "default.yaml"


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataConfig:
    """Which images, at what size.

    Attributes:
        dataset: registered dataset name: ``mni152`` (offline default: brain MRI slices shipped
            in nilearn), ``medmnist`` (a MedMNIST ``.npz``), ``imagefolder`` (class-per-folder).
        path: file or folder for ``medmnist``/``imagefolder``; unused by ``mni152``.
        image_size: side length in pixels the images are resized to.
        channels: 1 (grayscale) or 3 (RGB); images are converted on load.
        test_fraction: share of the images held out for the global test split (stratified),
            used when the source has no test split of its own.
        medmnist_flag: MedMNIST subset name used with ``medmnist`` when ``path`` is not given
            (downloaded by the ``medmnist`` package, online only).
        cache_dir: where built datasets and trained weights are cached; default
            ``~/.cache/fl_shadow`` (or ``$FL_SHADOW_CACHE``).
    """

    dataset: str = "mni152"
    path: str | None = None
    image_size: int = 32
    channels: int = 1
    test_fraction: float = 0.2
    medmnist_flag: str = "pneumoniamnist"
    cache_dir: str | None = None

    def validate(self, key: str) -> None:
        _check(self.image_size >= 8, f"{key}.image_size", "an integer >= 8", self.image_size)
        _check(self.channels in (1, 3), f"{key}.channels", "1 or 3", self.channels)
        _check(0 < self.test_fraction < 1, f"{key}.test_fraction", "a number in (0, 1)",
               self.test_fraction)


@dataclass(frozen=True)
class PartitionConfig:
    """How the training split is divided among clients.

    Attributes:
        scheme: ``iid`` (equal shuffled shards), ``dirichlet`` (label skew with ``alpha``) or
            ``sizes`` (explicit per-client sizes, class-balanced where possible).
        num_clients: number of clients (hospitals).
        alpha: Dirichlet concentration; small = strong label skew.
        sizes: per-client number of training images (``sizes`` scheme).
        batch_sizes: per-client local batch size; one value for all clients, or one per client.
    """

    scheme: Literal["iid", "dirichlet", "sizes"] = "iid"
    num_clients: int = 4
    alpha: float = 0.5
    sizes: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = (8,)

    def validate(self, key: str) -> None:
        _check(self.num_clients >= 1, f"{key}.num_clients", "an integer >= 1", self.num_clients)
        _check(self.alpha > 0, f"{key}.alpha", "a number > 0", self.alpha)
        if self.scheme == "sizes":
            _check(self.sizes is not None, f"{key}.sizes", "a list of per-client sizes when "
                   "scheme is 'sizes'", self.sizes)
        if self.sizes is not None:
            _check(len(self.sizes) == self.num_clients, f"{key}.sizes",
                   f"{self.num_clients} entries (one per client)", list(self.sizes))
            _check(all(s >= 1 for s in self.sizes), f"{key}.sizes", "sizes >= 1", list(self.sizes))
        _check(len(self.batch_sizes) in (1, self.num_clients), f"{key}.batch_sizes",
               f"1 or {self.num_clients} entries", list(self.batch_sizes))
        _check(all(b >= 1 for b in self.batch_sizes), f"{key}.batch_sizes", "batch sizes >= 1",
               list(self.batch_sizes))

    def batch_size_of(self, client: int) -> int:
        return self.batch_sizes[0] if len(self.batch_sizes) == 1 else self.batch_sizes[client]


@dataclass(frozen=True)
class ModelConfig:
    """The task model.

    Attributes:
        name: ``convnet`` (small, fast on CPU) or ``resnet18`` (BatchNorm, paper scale).
        width: base channel width of ``convnet``.
        norm: normalization layers of ``convnet``: ``batch`` or ``none``.
    """

    name: str = "convnet"
    width: int = 32
    norm: Literal["batch", "none"] = "batch"

    def validate(self, key: str) -> None:
        _check(self.width >= 1, f"{key}.width", "an integer >= 1", self.width)


@dataclass(frozen=True)
class TrainConfig:
    """Federated and local training.

    Attributes:
        rounds: number of federated rounds.
        local_epochs: passes over the local data per round (used when ``local_steps`` is unset).
        local_steps: if set, exactly this many SGD steps per round, cycling through the local
            data in batches; ``1`` gives the single-gradient threat model.
        lr: local learning rate.
        optimizer: local optimizer.
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        eval_batch_size: batch size for evaluation on the test split.
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``.
    """

    rounds: int = 3
    local_epochs: int = 1
    local_steps: int | None = None
    lr: float = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float = 0.0
    weight_decay: float = 0.0
    eval_batch_size: int = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self, key: str) -> None:
        _check(self.rounds >= 1, f"{key}.rounds", "an integer >= 1", self.rounds)
        _check(self.local_epochs >= 1, f"{key}.local_epochs", "an integer >= 1", self.local_epochs)
        if self.local_steps is not None:
            _check(self.local_steps >= 1, f"{key}.local_steps", "an integer >= 1 or null",
                   self.local_steps)
        _check(self.lr > 0, f"{key}.lr", "a number > 0", self.lr)
        _check(0 <= self.momentum < 1, f"{key}.momentum", "a number in [0, 1)", self.momentum)
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "a number >= 0", self.weight_decay)
        _check(self.eval_batch_size >= 1, f"{key}.eval_batch_size", "an integer >= 1",
               self.eval_batch_size)


@dataclass(frozen=True)
class FlowerDpConfig:
    """Flower's own differential privacy (``flwr`` 1.41), as a Flower user would switch it on.

    ``mode``:

    * ``none``: no Flower DP;
    * ``server_side_clipping``: central DP, ``DifferentialPrivacyServerSideFixedClipping``: the
      server clips each received update to ``clipping_norm`` and adds Gaussian noise of std
      ``noise_multiplier * clipping_norm / sampled clients`` to the aggregate;
    * ``client_side_clipping``: central DP, ``DifferentialPrivacyClientSideFixedClipping`` plus
      the client mod ``fixedclipping_mod``: each client clips its update, the server adds the
      same noise to the aggregate;
    * ``local_dp``: ``LocalDpMod``: each client clips its update to ``clipping_norm`` and adds
      Gaussian noise of std ``sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon`` to every value
      it sends (the classic Gaussian-mechanism calibration, Dwork & Roth Thm. A.1, which is
      proven for ``epsilon < 1`` only; Flower applies it to any ``epsilon``). ``epsilon`` and
      ``delta`` are per round and per client, not accounted over rounds.

    Flower clips and noises every array of the model's ``state_dict``, BatchNorm running
    statistics included (their integer batch counters count towards the update's norm, but
    are neither scaled nor, below one, changed by noise). See :mod:`strategies.flower_dp`.

    Attributes:
        mode: which of the above.
        noise_multiplier: central modes: noise std in units of ``clipping_norm`` per sampled
            client (Flower recommends >= 1 for strong privacy).
        clipping_norm: L2 bound of one client's update (all modes but ``none``).
        sensitivity: ``local_dp``: the L2 sensitivity the noise is calibrated to (a clipped
            update changes by at most ``clipping_norm`` when one client's data is removed).
        epsilon: ``local_dp``: privacy budget per round (smaller = more noise).
        delta: ``local_dp``: failure probability, in (0, 1).
    """

    mode: Literal["none", "server_side_clipping", "client_side_clipping", "local_dp"] = "none"
    noise_multiplier: float = 1.0
    clipping_norm: float = 1.0
    sensitivity: float = 1.0
    epsilon: float = 10.0
    delta: float = 1e-5

    def validate(self, key: str) -> None:
        _check(self.noise_multiplier >= 0, f"{key}.noise_multiplier", "a number >= 0",
               self.noise_multiplier)
        _check(self.clipping_norm > 0, f"{key}.clipping_norm", "a number > 0",
               self.clipping_norm)
        _check(self.sensitivity >= 0, f"{key}.sensitivity", "a number >= 0", self.sensitivity)
        # Flower accepts epsilon = 0 and delta = 0, which give infinite or NaN noise.
        _check(self.epsilon > 0, f"{key}.epsilon", "a number > 0", self.epsilon)
        _check(0 < self.delta < 1, f"{key}.delta", "a number in (0, 1)", self.delta)


@dataclass(frozen=True)
class StrategyConfig:
    """Server-side aggregation.

    Attributes:
        name: ``fedavg``.
        fraction_fit: share of clients sampled each round.
        min_fit_clients: fewest clients a round may train with.
        min_available_clients: fewest connected clients before a round starts.
        flower_dp: Flower's built-in DP wrappers and client mods (:class:`FlowerDpConfig`).
    """

    name: Literal["fedavg"] = "fedavg"
    fraction_fit: float = 1.0
    min_fit_clients: int = 1
    min_available_clients: int = 1
    flower_dp: FlowerDpConfig = field(default_factory=FlowerDpConfig)

    def validate(self, key: str) -> None:
        _check(0 < self.fraction_fit <= 1, f"{key}.fraction_fit", "a number in (0, 1]",
               self.fraction_fit)
        _check(self.min_fit_clients >= 1, f"{key}.min_fit_clients", "an integer >= 1",
               self.min_fit_clients)
        _check(self.min_available_clients >= 1, f"{key}.min_available_clients",
               "an integer >= 1", self.min_available_clients)
        self.flower_dp.validate(f"{key}.flower_dp")


@dataclass(frozen=True)
class DefenseConfig:
    """The client-side defense: a registered name and its parameters (validated by it)."""

    name: str = "none"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackConfig:
    """The curious server's attack.

    Attributes:
        name: registered attack name, or ``none`` for an honest server.
        rounds: server rounds (1-based) on which updates are attacked; ``[-1]`` = last round.
        clients: partition ids whose updates are attacked; empty = every client.
        labels: ``given`` (the threat model hands the true labels to the attacker) or
            ``recover`` (labels inferred from the last layer's gradient).
        bn_statistics: ``given`` (the attacker reads the BatchNorm running statistics in the
            client's uploaded ``state_dict``, as FedAvg over the whole ``state_dict`` sends
            them) or ``withheld`` (they are removed from what the attacker observes, e.g. a
            deployment that keeps BatchNorm buffers local); an attack that needs them then
            fails with ThreatModelError.
        max_images: cap on how many images one attack reconstructs; larger batches are skipped
            with a warning rather than attacked for hours.
        adaptive: the attacker knows which defense the clients run and its public parameters
            (``defense.name``/``defense.params``, never the clients' private randomness, keys
            or state) and models it in its objective (:mod:`attacks.adaptive`).
        parallel: how many attacks may run at the same time on the server (Ray tasks, one per
            attacked update); 1 runs them one after another in the server process.
        assumed_training: what the attacker assumes of the clients' local training where it
            does not take the plan the server sent as exact (clients that choose their own lr
            or step count): any of ``lr``, ``batch_size``, ``local_epochs``, ``local_steps``,
            ``momentum``, ``weight_decay``, ``optimizer``; empty = the sent plan is known.
        params: the attack's own parameters (validated by the attack).
    """

    name: str = "none"
    rounds: tuple[int, ...] = (1,)
    clients: tuple[int, ...] = ()
    labels: Literal["given", "recover"] = "recover"
    bn_statistics: Literal["given", "withheld"] = "given"
    max_images: int = 8
    adaptive: bool = False
    parallel: int = 1
    assumed_training: Mapping[str, Any] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(self.parallel >= 1, f"{key}.parallel", "an integer >= 1", self.parallel)
        plan_keys = ("lr", "batch_size", "local_epochs", "local_steps", "momentum",
                     "weight_decay", "optimizer")
        for name, value in self.assumed_training.items():
            where = f"{key}.assumed_training.{name}"
            _check(name in plan_keys, where, f"a key among {', '.join(plan_keys)}", name)
            if name == "optimizer":
                _check(value in ("sgd", "adam"), where, "sgd or adam", value)
            elif not (name == "local_steps" and value is None):
                positive = name in ("lr", "batch_size", "local_epochs", "local_steps")
                number = isinstance(value, int | float) and not isinstance(value, bool)
                _check(number and (value > 0 if positive else value >= 0), where,
                       "a number > 0" if positive else "a number >= 0", value)
        _check(all(r == -1 or r >= 1 for r in self.rounds), f"{key}.rounds",
               "round numbers >= 1 (or -1 for the last round)", list(self.rounds))
        _check(all(c >= 0 for c in self.clients), f"{key}.clients", "partition ids >= 0",
               list(self.clients))
        _check(self.max_images >= 1, f"{key}.max_images", "an integer >= 1", self.max_images)

    def attacks_round(self, server_round: int, num_rounds: int) -> bool:
        return any(r == server_round or (r == -1 and server_round == num_rounds)
                   for r in self.rounds)

    def attacks_client(self, partition_id: int) -> bool:
        return not self.clients or partition_id in self.clients


@dataclass(frozen=True)
class GeneratorConfig:
    """The image generator pretrained on the public split (shadow defense, GGL/GIAS attacks).

    Trained once per dataset and these settings, then cached (see
    :mod:`fl_shadow.generative.pretrain`); ``fl-shadow pretrain-generator`` trains it ahead.

    Attributes:
        latent_dim: size of the latent code ``z``.
        max_channels: channels of the generator's smallest feature map.
        min_channels: the fewest channels of any block.
        iterations: GAN training iterations (one discriminator + one generator step each).
        batch_size: images per GAN iteration.
        lr: Adam learning rate of both networks.
        ema: decay of the generator's exponential moving average (the checkpoint is the EMA).
        augment: differentiable augmentation (translation, cutout) of real and fake images,
            which keeps the discriminator from memorising a small public set.
        seed: training seed (independent of the experiment seed, so every experiment on the
            same data shares one checkpoint).
    """

    latent_dim: int = 64
    max_channels: int = 128
    min_channels: int = 16
    iterations: int = 1500
    batch_size: int = 32
    lr: float = 2e-4
    ema: float = 0.99
    augment: bool = True
    seed: int = 0

    def validate(self, key: str) -> None:
        for name in ("latent_dim", "max_channels", "min_channels", "iterations", "batch_size"):
            value = getattr(self, name)
            _check(value >= 1, f"{key}.{name}", "an integer >= 1", value)
        _check(self.min_channels <= self.max_channels, f"{key}.min_channels",
               f"at most generator.max_channels ({self.max_channels})", self.min_channels)
        _check(self.lr > 0, f"{key}.lr", "a number > 0", self.lr)
        _check(0 <= self.ema < 1, f"{key}.ema", "a number in [0, 1)", self.ema)


@dataclass(frozen=True)
class SimulationConfig:
    """Resources of Flower's simulation engine.

    Attributes:
        num_cpus_per_client: CPU cores reserved per client actor (Ray).
        num_gpus_per_client: GPU share per client actor (0 on CPU machines).
    """

    num_cpus_per_client: float = 1.0
    num_gpus_per_client: float = 0.0


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment. See ``experiments/configs/default.yaml`` for a documented example."""

    name: str = "default"
    seed: int = 0
    output_dir: str = "results"
    data: DataConfig = field(default_factory=DataConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    def validate(self) -> None:
        _check(bool(self.name) and "/" not in self.name, "name", "a non-empty name without '/'",
               self.name)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)
        _check(self.strategy.min_fit_clients <= self.partition.num_clients,
               "strategy.min_fit_clients", f"at most partition.num_clients "
               f"({self.partition.num_clients})", self.strategy.min_fit_clients)
        bad = [c for c in self.attack.clients if c >= self.partition.num_clients]
        _check(not bad, "attack.clients", f"partition ids < {self.partition.num_clients}", bad)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that :func:`load_config_dict` reads back unchanged."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file, apply ``key=value`` overrides, and validate.

    Args:
        path: YAML file; ``None`` reads the embedded default (``experiments/configs/default.yaml``).
        overrides: dotted ``key=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    path = Path(path) if path is not None else DEFAULT_CONFIG
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return load_config_dict(apply_overrides(raw, overrides))


def load_config_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain mapping."""
    config = _build(ExperimentConfig, raw, "")
    config.validate()
    return config


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides applied."""
    result: dict[str, Any] = _to_plain(raw)
    for item in overrides:
        item = item.strip()
        if not item:
            continue
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. train.rounds=5")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise ConfigError(f"{key}: override value {text!r} is not valid YAML") from None
        node = result
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
            node = child
        node[parts[-1]] = value
    return result


def parse_overrides(text: str) -> list[str]:
    """Split a run-config ``overrides`` string (``"a.b=1; c=[1,2]"``) into items.

    Items are separated by ``;`` or newlines, so list values may contain commas and spaces.
    """
    return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]


def build_params(cls: type[T], raw: Mapping[str, Any] | None, key: str) -> T:
    """Validate a component's ``params`` mapping into its params dataclass ``cls``.

    A params dataclass may define ``validate(self, key)`` for range checks.
    """
    params = _build(cls, raw or {}, key)
    if hasattr(params, "validate"):
        params.validate(key)
    return params


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------
def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _build(cls: type[T], raw: Any, key: str) -> T:
    where = key or "config"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in raw if k not in fields]
    if unknown:
        prefix = f"{key}." if key else ""
        raise ConfigError(
            f"{prefix}{unknown[0]}: unknown key; expected one of: {', '.join(fields)}"
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        sub = f"{key}.{name}" if key else name
        values[name] = _coerce(hints[name], value, sub)
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}: expected one of {', '.join(map(str, choices))}, "
                              f"got {value!r}")
        return value
    if origin in (tuple, list):
        args = get_args(tp)
        item_tp = args[0] if args else Any
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `rounds: 3` reads as `rounds: [3]`
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of {_describe(item_tp)}, got {value!r}")
        items = [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (Mapping, dict) or tp in (dict, Mapping):
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(map(str, get_args(tp)))
    if origin in (tuple, list):
        return "a list"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value

