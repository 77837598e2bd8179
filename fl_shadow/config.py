"""Experiment config: YAML -> frozen, typed, validated dataclasses.

One YAML file describes one experiment (the shipped ``fl_shadow/configs/default.yaml`` is the
documented example). Sections map to the dataclasses below, validated by pydantic: every key is
checked against its declared type and range, unknown keys are refused, YAML integers are
accepted where numbers are expected, and ``.inf``/``.nan`` are refused everywhere. Errors are
:class:`~fl_shadow.errors.ConfigError` with a one-line message naming the dotted key::

    train.lr: expected a number > 0, got -0.1

Files compose: ``base: default.yaml`` at the top of a file starts from that file (a path
relative to the including file, or the name of a shipped config) and the rest of the file
overrides it key by key. A section that names another component (``defense.name``,
``attack.name``, ``strategy.name``) does not inherit the base's ``params`` of the old one.

Overrides use the same dotted keys with YAML values (``train.rounds=5``,
``attack.rounds=[1,5]``), so the command line and the file speak one language.

YAML is read strictly: aliases (``*name``, ``<<: *name``) are refused (expanding them before
any key is checked is how a few hundred bytes ask for gigabytes), so are duplicate keys (PyYAML
keeps the last one silently), files that are not UTF-8 text, nesting deeper than
:data:`MAX_YAML_DEPTH` and files over :data:`MAX_YAML_BYTES`.

What this module does not check: that component names are registered and their ``params``
valid, that data paths exist, sizes against the data, and the machine (CUDA, cores). Those
need the registries of every layer and the data, and are checked at load by
:func:`fl_shadow.apps.experiment.load_experiment`, before anything runs.

Component parameters (``defense.params``, ``attack.params``, ``strategy.params``) are declared
with :func:`settings` too, so every component validates its keys the same way
(:func:`parse_settings`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import pydantic
import yaml
from pydantic import BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from pydantic.dataclasses import dataclass as _pydantic_dataclass

from fl_shadow.errors import ConfigError

T = TypeVar("T")

#: The configs that ship inside the package (``fl-shadow show-config`` works from a wheel).
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = SHIPPED_CONFIGS / "default.yaml"
MAX_YAML_BYTES = 1 << 20
MAX_YAML_DEPTH = 32
MAX_SEED = 2**32 - 1

# ---------------------------------------------------------------------------------------------
# Field types: YAML's own types, no silent conversions ("5" is not 5, 1 is not true), except
# that an integer is a valid number.
# ---------------------------------------------------------------------------------------------
Int = StrictInt
Float = Annotated[float, pydantic.Strict()]
Bool = StrictBool
Str = StrictStr

_SETTINGS = ConfigDict(extra="forbid", allow_inf_nan=False)


def settings(cls: type[T]) -> type[T]:
    """Declare a frozen, validated settings dataclass (a config section or component params).

    Fields are annotated with their type and range (``Annotated[Float, Field(gt=0)]``); a
    ``__post_init__`` may check rules between fields and raise :class:`ConfigError` naming the
    field (``"min_cam_alpha: expected at most max_cam_alpha (0.5), got 0.7"``).
    """
    return _pydantic_dataclass(frozen=True, config=_SETTINGS)(cls)  # type: ignore[return-value]


def _listify(value: Any) -> Any:
    """``rounds: 3`` reads as ``rounds: [3]``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


def _empty_mapping(value: Any) -> Any:
    return {} if value is None else value


IntList = Annotated[tuple[Int, ...], BeforeValidator(_listify)]
Params = Annotated[dict[Str, Any], BeforeValidator(_empty_mapping)]
S = TypeVar("S")
#: A nested section; an empty one (``train:`` with nothing under it) means all defaults.
Section = Annotated[S, BeforeValidator(_empty_mapping)]


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
@settings
class DataConfig:
    """Which images, at what size.

    Attributes:
        dataset: registered dataset name: ``mni152`` (offline default: brain MRI slices shipped
            in nilearn), ``medmnist`` (a MedMNIST ``.npz``), ``imagefolder`` (class-per-folder).
        path: file or folder for ``medmnist``/``imagefolder``; unused by ``mni152``.
        patients: which patient each image of ``imagefolder`` comes from, so that no patient
            is in two splits: a value ending in ``.csv`` names a table (columns ``file``, the
            image's path relative to ``path`` with ``/`` separators, and ``patient``; a
            relative one is resolved like ``path``); anything else is a regular expression
            searched in each image's relative path, whose one capturing group (or group named
            ``patient``) is the patient id, e.g. ``person(\\d+)_``; None: images are split
            one by one.
        image_size: side length in pixels the images are resized to (8..1024).
        channels: 1 (grayscale) or 3 (RGB); images are converted on load.
        test_fraction: share of the images held out for the global test split (stratified),
            used when the source has no test split of its own.
        public_fraction: share of the images set aside as the **public** split (what the
            server and the generative components may learn from; never a client's or the test
            split's), taken before the test split; None: the dataset's own default (0.15 for
            the slice datasets ``mni152``/``ct_head``, 0.1 for an image folder without ``val``).
        medmnist_flag: MedMNIST subset name used with ``medmnist`` when ``path`` is not given
            (downloaded by the ``medmnist`` package, online only).
        cache_dir: where built datasets and trained weights are cached; default
            ``~/.cache/fl_shadow`` (or ``$FL_SHADOW_CACHE``).
    """

    dataset: Str = "mni152"
    path: Str | None = None
    patients: Str | None = None
    image_size: Annotated[Int, Field(ge=8, le=1024)] = 32
    channels: Literal[1, 3] = 1
    test_fraction: Annotated[Float, Field(gt=0, lt=1)] = 0.2
    public_fraction: Annotated[Float, Field(gt=0, lt=1)] | None = None
    medmnist_flag: Str = "pneumoniamnist"
    cache_dir: Str | None = None

    def __post_init__(self) -> None:
        _no_nul("path", self.path)
        _no_nul("cache_dir", self.cache_dir)


@settings
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
    num_clients: Annotated[Int, Field(ge=1, le=100_000)] = 4
    alpha: Annotated[Float, Field(gt=0)] = 0.5
    sizes: tuple[Annotated[Int, Field(ge=1)], ...] | None = None
    batch_sizes: Annotated[tuple[Annotated[Int, Field(ge=1, le=1_000_000)], ...],
                           BeforeValidator(_listify)] = (8,)

    def __post_init__(self) -> None:
        if self.scheme == "sizes" and self.sizes is None:
            raise ConfigError("sizes: expected a list of per-client sizes when scheme is "
                              "'sizes', got None")
        if self.sizes is not None and len(self.sizes) != self.num_clients:
            raise ConfigError(f"sizes: expected {self.num_clients} entries (one per client), "
                              f"got {list(self.sizes)!r}")
        if len(self.batch_sizes) not in (1, self.num_clients):
            raise ConfigError(f"batch_sizes: expected 1 or {self.num_clients} entries, got "
                              f"{list(self.batch_sizes)!r}")

    def batch_size_of(self, client: int) -> int:
        return self.batch_sizes[0] if len(self.batch_sizes) == 1 else self.batch_sizes[client]


@settings
class ModelConfig:
    """The task model.

    Attributes:
        name: registered model: ``convnet`` (small, fast on CPU) or ``resnet18`` (BatchNorm,
            paper scale).
        width: base channel width of ``convnet``.
        norm: normalization layers of ``convnet``: ``batch`` or ``none``.
    """

    name: Str = "convnet"
    width: Annotated[Int, Field(ge=1, le=1024)] = 32
    norm: Literal["batch", "none"] = "batch"


@settings
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
        device: ``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda`` (refused at load
            on a machine without CUDA).
    """

    rounds: Annotated[Int, Field(ge=1, le=100_000)] = 3
    local_epochs: Annotated[Int, Field(ge=1, le=10_000)] = 1
    local_steps: Annotated[Int, Field(ge=1, le=1_000_000)] | None = None
    lr: Annotated[Float, Field(gt=0, le=1e4)] = 0.01
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.0
    weight_decay: Annotated[Float, Field(ge=0)] = 0.0
    eval_batch_size: Annotated[Int, Field(ge=1, le=1_000_000)] = 256
    device: Literal["auto", "cpu", "cuda"] = "auto"


@settings
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
        epsilon: ``local_dp``: privacy budget per round (smaller = more noise; Flower accepts
            0, which gives infinite noise).
        delta: ``local_dp``: failure probability, in (0, 1).
    """

    mode: Literal["none", "server_side_clipping", "client_side_clipping", "local_dp"] = "none"
    noise_multiplier: Annotated[Float, Field(ge=0)] = 1.0
    clipping_norm: Annotated[Float, Field(gt=0)] = 1.0
    sensitivity: Annotated[Float, Field(ge=0)] = 1.0
    epsilon: Annotated[Float, Field(gt=0)] = 10.0
    delta: Annotated[Float, Field(gt=0, lt=1)] = 1e-5


@settings
class StrategyConfig:
    """Server-side aggregation: a registered Flower strategy, wrapped by the curious server.

    Attributes:
        name: registered strategy (:mod:`strategies`): ``fedavg``, ``fedprox``, ``fedadam``,
            ``fedyogi``, ``fedadagrad``, ``fedavgm``, ``fedmedian``, ``krum``.
        fraction_fit: share of clients sampled each round.
        min_fit_clients: fewest clients a round may train with (at most
            ``partition.num_clients``).
        min_available_clients: fewest connected clients before a round starts (at most
            ``partition.num_clients``).
        wait_for_clients_s: how long each round waits for ``min_available_clients`` connected
            clients before the run fails with one line naming both numbers.
        flower_dp: Flower's built-in DP wrappers and client mods (:class:`FlowerDpConfig`).
        params: the strategy's own parameters (validated by its params dataclass, e.g.
            ``proximal_mu`` of ``fedprox``, ``eta`` of ``fedadam``).
    """

    name: Str = "fedavg"
    fraction_fit: Annotated[Float, Field(gt=0, le=1)] = 1.0
    min_fit_clients: Annotated[Int, Field(ge=1)] = 1
    min_available_clients: Annotated[Int, Field(ge=1)] = 1
    wait_for_clients_s: Annotated[Float, Field(gt=0, le=7 * 86400)] = 120.0
    flower_dp: Section[FlowerDpConfig] = field(default_factory=FlowerDpConfig)
    params: Params = field(default_factory=dict)


@settings
class DefenseConfig:
    """The client-side defense: a registered name and its parameters (validated by it)."""

    name: Str = "none"
    params: Params = field(default_factory=dict)


_PLAN_KEYS = ("lr", "batch_size", "local_epochs", "local_steps", "momentum", "weight_decay",
              "optimizer")


@settings
class AttackConfig:
    """The curious server's attack.

    Attributes:
        name: registered attack name; ``none`` is the honest server.
        rounds: server rounds (1-based) on which updates are attacked; ``[-1]`` = last round.
        clients: partition ids whose updates are attacked; empty = every client.
        labels: ``given`` (the threat model hands the true labels to the attacker) or
            ``recover`` (labels inferred from the last layer's gradient).
        bn_statistics: ``given`` (the attacker reads the BatchNorm running statistics in the
            client's uploaded ``state_dict``, as FedAvg over the whole ``state_dict`` sends
            them) or ``withheld`` (they are removed from what the attacker observes, e.g. a
            deployment that keeps BatchNorm buffers local); an attack that needs them is then
            refused at load.
        max_images: the one image limit: updates computed from more images than this are not
            attacked (logged, and a ``skipped`` row in ``privacy.jsonl``); at most the attack's
            own ceiling, checked at load.
        adaptive: the attacker knows which defense the clients run and its public parameters
            (``defense.name``/``defense.params``, never the clients' private randomness, keys
            or state) and models it in its objective (:mod:`attacks.adaptive`).
        combine_rounds: the cross-round attacker: each reconstruction of a client is
            combined with the attacker's earlier reconstructions of the same client (aligned,
            standardized, averaged; :mod:`fl_shadow.cross_round`). Noise drawn fresh every
            round averages away; a frozen noise memory does not.
        parallel: how many attacks may run at the same time on the server (Ray tasks, one per
            attacked update); 1 runs them one after another in the server process.
        assumed_training: what the attacker assumes of the clients' local training where it
            does not take the plan the server sent as exact (clients that choose their own lr
            or step count): any of ``lr``, ``batch_size``, ``local_epochs``, ``local_steps``,
            ``momentum``, ``weight_decay``, ``optimizer``; empty = the sent plan is known.
        params: the attack's own parameters (validated by the attack).
    """

    name: Str = "none"
    rounds: IntList = (1,)
    clients: IntList = ()
    labels: Literal["given", "recover"] = "recover"
    bn_statistics: Literal["given", "withheld"] = "given"
    max_images: Annotated[Int, Field(ge=1, le=1024)] = 8
    adaptive: Bool = False
    combine_rounds: Bool = False
    parallel: Annotated[Int, Field(ge=1, le=256)] = 1
    assumed_training: Params = field(default_factory=dict)
    params: Params = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not all(r == -1 or r >= 1 for r in self.rounds):
            raise ConfigError("rounds: expected round numbers >= 1 (or -1 for the last round), "
                              f"got {list(self.rounds)!r}")
        if not all(c >= 0 for c in self.clients):
            raise ConfigError(f"clients: expected partition ids >= 0, got {list(self.clients)!r}")
        for name, value in self.assumed_training.items():
            where = f"assumed_training.{name}"
            if name not in _PLAN_KEYS:
                raise ConfigError(f"{where}: unknown key; expected one of: "
                                  f"{', '.join(_PLAN_KEYS)}")
            if name == "optimizer":
                if value not in ("sgd", "adam"):
                    raise ConfigError(f"{where}: expected one of sgd, adam, got {value!r}")
            elif not (name == "local_steps" and value is None):
                positive = name in ("lr", "batch_size", "local_epochs", "local_steps")
                integral = name in ("batch_size", "local_epochs", "local_steps")
                number = (isinstance(value, int) if integral else isinstance(value, int | float)) \
                    and not isinstance(value, bool) and math.isfinite(value)
                if not number or not (value > 0 if positive else value >= 0):
                    kind = "an integer" if integral else "a number"
                    raise ConfigError(f"{where}: expected {kind} {'> 0' if positive else '>= 0'},"
                                      f" got {value!r}")

    def attacks_round(self, server_round: int, num_rounds: int) -> bool:
        return any(r == server_round or (r == -1 and server_round == num_rounds)
                   for r in self.rounds)

    def attacks_client(self, partition_id: int) -> bool:
        return not self.clients or partition_id in self.clients


@settings
class GeneratorConfig:
    """The image generator pretrained on the public split (shadow defense, GGL/GIAS attacks).

    Trained once per dataset and these settings, then cached (see
    :mod:`fl_shadow.generative.pretrain`); ``fl-shadow pretrain-generator`` trains it ahead.

    Attributes:
        latent_dim: size of the latent code ``z``.
        max_channels: channels of the generator's smallest feature map.
        min_channels: the fewest channels of any block (at most ``max_channels``).
        iterations: GAN training iterations (one discriminator + one generator step each).
        batch_size: images per GAN iteration.
        lr: Adam learning rate of both networks.
        ema: decay of the generator's exponential moving average (the checkpoint is the EMA).
        augment: differentiable augmentation (translation, cutout) of real and fake images,
            which keeps the discriminator from memorising a small public set.
        seed: training seed (independent of the experiment seed, so every experiment on the
            same data shares one checkpoint).
    """

    latent_dim: Annotated[Int, Field(ge=1, le=4096)] = 64
    max_channels: Annotated[Int, Field(ge=1, le=4096)] = 128
    min_channels: Annotated[Int, Field(ge=1, le=4096)] = 16
    iterations: Annotated[Int, Field(ge=1, le=10_000_000)] = 1500
    batch_size: Annotated[Int, Field(ge=1, le=100_000)] = 32
    lr: Annotated[Float, Field(gt=0)] = 2e-4
    ema: Annotated[Float, Field(ge=0, lt=1)] = 0.99
    augment: Bool = True
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = 0

    def __post_init__(self) -> None:
        if self.min_channels > self.max_channels:
            raise ConfigError(f"min_channels: expected at most generator.max_channels "
                              f"({self.max_channels}), got {self.min_channels!r}")


@settings
class SimulationConfig:
    """Resources of Flower's simulation engine.

    Attributes:
        num_cpus_per_client: CPU cores reserved per client actor (Ray); at most the machine's
            cores (checked at load: a larger value never schedules a client).
        num_gpus_per_client: GPU share per client actor (0 on CPU machines; above 0 needs CUDA).
    """

    num_cpus_per_client: Annotated[Float, Field(gt=0, le=4096)] = 1.0
    num_gpus_per_client: Annotated[Float, Field(ge=0, le=64)] = 0.0


@settings
class ExperimentConfig:
    """One experiment. See ``fl_shadow/configs/default.yaml`` for a documented example.

    Rules between sections (checked at construction, so every config in memory obeys them):
    ``strategy.min_fit_clients`` and ``strategy.min_available_clients`` at most
    ``partition.num_clients``; ``attack.clients`` are partition ids; ``attack.rounds`` are
    rounds of ``train.rounds`` (or -1, the last).
    """

    name: Str = "default"
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = 0
    output_dir: Str = "results"
    data: Section[DataConfig] = field(default_factory=DataConfig)
    partition: Section[PartitionConfig] = field(default_factory=PartitionConfig)
    model: Section[ModelConfig] = field(default_factory=ModelConfig)
    train: Section[TrainConfig] = field(default_factory=TrainConfig)
    strategy: Section[StrategyConfig] = field(default_factory=StrategyConfig)
    defense: Section[DefenseConfig] = field(default_factory=DefenseConfig)
    attack: Section[AttackConfig] = field(default_factory=AttackConfig)
    generator: Section[GeneratorConfig] = field(default_factory=GeneratorConfig)
    simulation: Section[SimulationConfig] = field(default_factory=SimulationConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check the rules between sections (see the class docstring)."""
        name_ok = (bool(self.name) and len(self.name) <= 200 and self.name not in (".", "..")
                   and not any(c in self.name for c in "/\\\0") and self.name.isprintable())
        _check(name_ok, "name", "a printable name (at most 200 characters) without '/'",
               self.name)
        _no_nul("output_dir", self.output_dir)
        n = self.partition.num_clients
        _check(self.strategy.min_fit_clients <= n, "strategy.min_fit_clients",
               f"at most partition.num_clients ({n})", self.strategy.min_fit_clients)
        _check(self.strategy.min_available_clients <= n, "strategy.min_available_clients",
               f"at most partition.num_clients ({n})", self.strategy.min_available_clients)
        bad = [c for c in self.attack.clients if c >= n]
        _check(not bad, "attack.clients", f"partition ids < {n}", bad)
        late = [r for r in self.attack.rounds if r > self.train.rounds]
        _check(not late, "attack.rounds", f"rounds of the run (1..{self.train.rounds}, or -1)",
               late)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (lists, not tuples) that :func:`load_config_dict` reads back unchanged."""
        return _to_plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------
def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read a YAML experiment file (with its ``base:`` chain), apply overrides, and validate.

    Args:
        path: YAML file, or the name of a shipped config (``default``, ``shadow.yaml``);
            ``None`` reads the shipped default.
        overrides: dotted ``key=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type or out-of-range value.
    """
    file = resolve_config_path(path) if path is not None else DEFAULT_CONFIG
    return load_config_dict(apply_overrides(compose_config(file), overrides))


def load_config_dict(raw: Mapping[str, Any]) -> ExperimentConfig:
    """Build and validate an :class:`ExperimentConfig` from a plain mapping."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"config: expected a mapping of sections, got {raw!r}")
    if "base" in raw:
        raise ConfigError("base: only a config file may name a base config")
    return parse_settings(ExperimentConfig, raw, "")


def resolve_paths(config: ExperimentConfig, project_dir: str | Path) -> ExperimentConfig:
    """The config with its relative paths made absolute against the operator's project folder.

    ``output_dir``, ``data.path``, ``data.cache_dir`` and a ``data.patients`` table (a value
    ending in ``.csv``), ``~`` expanded; absolute and unset paths, and a ``data.patients``
    regular expression, are kept. Every process of a run (the ServerApp, the clients) then
    reads the same files, wherever it was started (:mod:`fl_shadow.apps.server_app` says
    which folder).
    """
    base = Path(project_dir)

    def absolute(value: str | None) -> str | None:
        if value is None:
            return None
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else base / path)

    patients = config.data.patients
    if patients is not None and patients.lower().endswith(".csv"):
        patients = absolute(patients)  # a table, not a regular expression (see DataConfig)
    data = dataclasses.replace(config.data, path=absolute(config.data.path),
                               patients=patients, cache_dir=absolute(config.data.cache_dir))
    return dataclasses.replace(config, output_dir=absolute(config.output_dir), data=data)


def shipped_config_names() -> list[str]:
    """Names of the configs shipped in the package (``default``, ``shadow``, ...)."""
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def resolve_config_path(path: str | Path, *, relative_to: Path | None = None) -> Path:
    """Find a config file: as given (``~`` expanded), next to ``relative_to``, or shipped.

    Raises:
        ConfigError: none of these is a file.
    """
    text = str(path)
    _no_nul("config", text)
    candidate = Path(text).expanduser()
    places = [candidate] if candidate.is_absolute() else [
        *([relative_to / candidate] if relative_to is not None else []), candidate,
        SHIPPED_CONFIGS / candidate, SHIPPED_CONFIGS / f"{text}.yaml"]
    for place in places:
        if place.is_file():
            return place
    if candidate.is_dir():
        raise ConfigError(f"{candidate}: is a folder, not a config file")
    raise ConfigError(f"config file not found: {candidate} (shipped configs: "
                      f"{', '.join(shipped_config_names())})")


def compose_config(path: Path) -> dict[str, Any]:
    """The raw mapping of ``path`` with its ``base:`` chain merged in (base first)."""
    chain: list[Path] = []
    layers: list[dict[str, Any]] = []
    current: Path | None = path
    while current is not None:
        resolved = current.resolve()
        if resolved in chain:
            raise ConfigError(f"{current}: base: the chain of base configs loops back to "
                              "this file")
        chain.append(resolved)
        raw = read_yaml(current)
        base = raw.pop("base", None)
        layers.append(raw)
        if base is None:
            current = None
        elif not isinstance(base, str) or not base:
            raise ConfigError(f"{current}: base: expected the name or path of a config file, "
                              f"got {base!r}")
        else:
            current = resolve_config_path(base, relative_to=current.parent)
    merged: dict[str, Any] = {}
    for layer in reversed(layers):
        merged = merge_config(merged, layer)
    return merged


def merge_config(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``: mappings merge key by key, anything else is replaced.

    A section whose ``name`` changes (another defense, attack or strategy) starts without the
    base's ``params``: they were the old component's.
    """
    out = _to_plain(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping):
            if "name" in value and value.get("name") != old.get("name"):
                old = {k: v for k, v in old.items() if k != "params"}
            out[key] = merge_config(old, value)
        else:
            out[key] = _to_plain(value)
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML config file strictly (see the module docstring); a mapping or empty.

    Raises:
        ConfigError: naming the file (and the line where YAML says one).
    """
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_YAML_BYTES // 1024} KiB; not a config "
                              "file")
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    raw = parse_yaml(data, str(path))
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def parse_yaml(data: bytes | str, name: str) -> Any:
    """Parse YAML text strictly; errors name ``name`` (a file, or an override's key)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{name}: not UTF-8 text (byte {exc.start})") from None
    if "\0" in data:
        raise ConfigError(f"{name}: not a text file (it holds NUL bytes)")
    loader = _StrictLoader(data)
    loader.name = name
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{name}: not valid YAML{where}") from None
    except RecursionError:
        raise ConfigError(f"{name}: nested too deeply") from None
    finally:
        loader.dispose()


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases, duplicate keys or unbounded nesting, and with
    YAML 1.2's floats: ``1e-5`` is a number (YAML 1.1 wants ``1.0e-5``, and reads ``1e-5`` as
    text, which then fails as "expected a number, got '1e-5'")."""

    name = "config"
    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"{self.name}: YAML aliases are not accepted (*{event.anchor} on "
                              f"line {event.start_mark.line + 1}); write the values out")
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"{self.name}: nested deeper than {MAX_YAML_DEPTH} levels "
                                  f"(line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:  # type: ignore[override]
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: a key "
                                  "must be a plain value") from None
            if first is not None:
                raise ConfigError(f"{self.name}: line {key_node.start_mark.line + 1}: duplicate "
                                  f"key {key!r} (first on line {first})")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


# Resolvers are per class: copy the safe loader's before adding to them.
_StrictLoader.yaml_implicit_resolvers = {
    first: list(resolvers) for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def apply_overrides(raw: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with dotted ``key=value`` overrides applied.

    As in a ``base:`` chain, an override that names another component (``attack.name=dlg``)
    drops the old component's ``params``; give the new one's after it
    (``attack.name=dlg attack.params.iterations=50``).
    """
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
            value = parse_yaml(text, f"override {key}") if text.strip() else None
        except ConfigError as exc:
            raise ConfigError(f"{key}: override value {text!r} is not valid YAML "
                              f"({str(exc).split(': ', 1)[-1]})") from None
        node = result
        parts = key.split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key part in {key!r}")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(parts[: i + 1])}: is a value, not a section")
            node = child
        if len(parts) == 2 and parts[1] == "name" and node.get("name") != value:
            node.pop("params", None)
        node[parts[-1]] = value
    return result


def parse_overrides(text: str) -> list[str]:
    """Split a run-config ``overrides`` string (``"a.b=1; c=[1,2]"``) into items.

    Items are separated by ``;`` or newlines, so list values may contain commas and spaces.
    """
    return [part.strip() for part in text.replace("\n", ";").split(";") if part.strip()]


def parse_settings(cls: type[T], raw: Any, key: str) -> T:
    """Validate ``raw`` (a mapping, or None for all defaults) into the settings class ``cls``.

    Args:
        cls: a :func:`settings` dataclass.
        raw: the YAML mapping.
        key: the dotted key of ``raw`` in the experiment (``"defense.params"``), named in
            errors; ``""`` for the top level.

    Raises:
        ConfigError: the first problem, as one line naming the dotted key.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{key or 'config'}: expected a mapping of keys, got {raw!r}")
    try:
        return pydantic.TypeAdapter(cls).validate_python(dict(raw))
    except pydantic.ValidationError as exc:
        raise ConfigError(_one_line(exc, cls, key)) from None


# Back-compat name used by the component registries.
build_params = parse_settings


# ---------------------------------------------------------------------------------------------
# Error messages
# ---------------------------------------------------------------------------------------------
def _check(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: expected {expected}, got {got!r}")


def _no_nul(key: str, value: str | None) -> None:
    if value is not None and "\0" in value:
        raise ConfigError(f"{key}: expected text without NUL bytes, got {value!r}")


def _one_line(exc: pydantic.ValidationError, cls: type, key: str) -> str:
    """The first validation error as ``dotted.key: expected ..., got ...``."""
    errors = exc.errors(include_url=False)
    error = errors[0]
    loc = [part for part in error["loc"]]
    # A union (``int | None``) reports one error per member; name the field once.
    if len(loc) >= 1 and isinstance(loc[-1], str) and loc[-1] in _UNION_MEMBER_TAGS:
        loc = loc[:-1]
    path = _join(key, loc)
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = error.get("input")
    annotation = _annotation_at(cls, loc)
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        fields = _field_names(_annotation_at(cls, loc[:-1]))
        return f"{path}: unknown key; " + (f"expected one of: {', '.join(fields)}"
                                           if fields else "this takes no keys")
    if kind == "value_error":
        cause = ctx.get("error")
        message = str(cause) if cause is not None else error["msg"]
        message = message.removeprefix("Value error, ")
        # A rule of a section names its field first ("sizes: expected ..."): prefix the
        # section's key.
        return _join(key, loc) + "." + message if loc or key else message
    expected = _EXPECTED.get(kind)
    if expected is None:
        if kind in _BOUNDS:
            # The violated side only: "a number > 0", not the field's whole range.
            expected = f"{_noun(annotation)} {_BOUNDS[kind]} {_number(ctx[_BOUND_CTX[kind]])}"
        elif kind == "literal_error":
            choices = _literal_choices(annotation)
            expected = ("one of " + ", ".join(map(str, choices))) if choices else \
                f"one of {ctx.get('expected')}"
        elif kind in ("too_long", "too_short"):
            expected = error["msg"].lower().removeprefix("input ")
        else:
            expected = error["msg"][0].lower() + error["msg"][1:]
            return f"{path}: {expected}, got {got!r}"
    if kind in _TYPE_ERRORS and annotation is not None:
        expected = _noun(annotation)
    return f"{path}: expected {expected}, got {got!r}"


_UNION_MEMBER_TAGS = {"int", "float", "str", "bool", "none", "tuple[int, ...]",
                      "constrained-int", "constrained-float"}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}
_BOUND_CTX = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt",
              "less_than_equal": "le"}
_EXPECTED = {
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "tuple_type": "a list", "list_type": "a list", "dict_type": "a mapping",
    "dataclass_type": "a mapping of keys", "dataclass_exact_type": "a mapping of keys",
    "missing": "a value (required)", "missing_argument": "a value (required)",
    "none_required": "null",
}
_TYPE_ERRORS = {"int_type", "int_parsing", "int_from_float", "float_type", "float_parsing",
                "bool_type", "string_type"}


def _join(key: str, loc: list[Any]) -> str:
    out = key
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else str(part)
    return out or "config"


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated`` and ``X | None`` down to the value type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) != 1:
                return tp
            tp = members[0]
        else:
            return tp


def _annotation_at(cls: Any, loc: list[Any]) -> Any:
    """The declared type at ``loc`` under the settings class ``cls`` (None if unknown)."""
    tp: Any = cls
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, str) and dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp, include_extras=True)
            if part not in hints:
                return None
            tp = hints[part]
        elif isinstance(part, int) and get_origin(tp) in (tuple, list):
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


def _field_names(tp: Any) -> list[str]:
    tp = _unwrap(tp)
    return [f.name for f in dataclasses.fields(tp)] if dataclasses.is_dataclass(tp) else []


def _literal_choices(tp: Any) -> tuple[Any, ...]:
    return get_args(tp) if get_origin(tp) is Literal else ()


def _noun(tp: Any) -> str:
    tp = _unwrap(tp)
    return {int: "an integer", float: "a number", bool: "true or false",
            str: "a string"}.get(tp, "a number")


def _number(value: Any) -> str:
    """``0.0`` -> ``0``, ``1e-05`` stays."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return str(value)


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


__all__ = ["AttackConfig", "Bool", "DEFAULT_CONFIG", "DataConfig", "DefenseConfig",
           "ExperimentConfig", "Float", "FlowerDpConfig", "GeneratorConfig", "Int", "IntList",
           "ModelConfig", "Params", "PartitionConfig", "SHIPPED_CONFIGS", "SimulationConfig",
           "Str", "StrategyConfig", "TrainConfig", "apply_overrides", "build_params",
           "compose_config", "load_config", "load_config_dict", "merge_config",
           "parse_overrides", "parse_settings", "parse_yaml", "read_yaml",
           "resolve_config_path", "resolve_paths", "settings", "shipped_config_names"]
