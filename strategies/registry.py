"""Aggregation strategies, registered by name (``strategy.name``) in :data:`STRATEGIES`.

A strategy here is one of Flower's own legacy strategies (``flwr.server.strategy``: the ones
that can drive the project's ``NumPyClient`` clients), built from the config and then wrapped
by the curious server (:class:`strategies.curious.CuriousServer`), as Flower's DP wrappers wrap
a strategy. A :class:`StrategySpec` says how to build it and what the rest of the project must
know about it:

* ``server_state``: the attributes in which the strategy keeps arrays across rounds (FedAdam's
  moments, FedAvgM's momentum); the checkpoint saves and a resume restores them, so a resumed
  run continues the same server optimizer;
* ``proximal_mu``: the weight of the proximal term the strategy asks clients to add to their
  local loss (FedProx), which clients train with and the attacker's replay models.

Adding a strategy: one ``register_strategy(StrategySpec(...))`` call with a params dataclass
(:func:`fl_shadow.config.settings`), in :mod:`strategies.flower_strategies` or a module of
your own imported by :mod:`strategies`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flwr.common import NDArrays, Parameters, Scalar
from flwr.server.strategy import Strategy

from fl_shadow.config import ExperimentConfig, parse_settings
from fl_shadow.registry import Registry

EvaluateFn = Callable[[int, NDArrays, dict[str, Scalar]], "tuple[float, dict[str, Scalar]] | None"]


@dataclass(frozen=True)
class StrategyInputs:
    """What every Flower strategy is built with, the same for all of them.

    Attributes:
        fraction_fit, min_fit_clients, min_available_clients: client sampling
            (``strategy.*``).
        fraction_evaluate, min_evaluate_clients: federated evaluation (on only for a defense
            with a private model, whose clients evaluate the global model themselves).
        initial_parameters: the global model of round 1 (or the checkpoint's, resuming).
        evaluate_fn: the central evaluation on the test split, every round.
    """

    fraction_fit: float
    min_fit_clients: int
    min_available_clients: int
    fraction_evaluate: float
    min_evaluate_clients: int
    initial_parameters: Parameters
    evaluate_fn: EvaluateFn | None

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments every legacy Flower strategy takes."""
        return {"fraction_fit": self.fraction_fit, "min_fit_clients": self.min_fit_clients,
                "min_available_clients": self.min_available_clients,
                "fraction_evaluate": self.fraction_evaluate,
                "min_evaluate_clients": self.min_evaluate_clients,
                "initial_parameters": self.initial_parameters, "evaluate_fn": self.evaluate_fn,
                "accept_failures": True}


def _no_proximal_term(params: Any) -> float:
    return 0.0


def _no_check(params: Any, config: ExperimentConfig) -> None:
    """Nothing to check between the params and the rest of the experiment."""


@dataclass(frozen=True)
class StrategySpec:
    """A registered strategy.

    Attributes:
        name: the ``strategy.name`` that selects it.
        factory: ``factory(params, inputs) -> flwr.server.strategy.Strategy``.
        params_type: the :func:`~fl_shadow.config.settings` dataclass of ``strategy.params``.
        summary: one line for the log, e.g. ``"FedAdam (Reddi et al. 2021)"``.
        server_state: attributes of the built strategy holding ``list[np.ndarray]`` across
            rounds (None until first set), saved in checkpoints.
        proximal_mu: ``proximal_mu(params)``: the proximal weight clients add to their local
            loss (FedProx), 0 otherwise.
        check: ``check(params, config)`` rules between the params and the experiment, at load
            (raises :class:`~fl_shadow.errors.ConfigError` naming the key).
    """

    name: str
    factory: Callable[[Any, StrategyInputs], Strategy]
    params_type: type
    summary: str
    server_state: tuple[str, ...] = ()
    proximal_mu: Callable[[Any], float] = _no_proximal_term
    check: Callable[[Any, ExperimentConfig], None] = _no_check

    def parse_params(self, raw: Any) -> Any:
        """Validate ``strategy.params`` into :attr:`params_type` (errors name the key)."""
        return parse_settings(self.params_type, raw, "strategy.params")


STRATEGIES: Registry[StrategySpec] = Registry("strategy", config_key="strategy.name")


def register_strategy(spec: StrategySpec) -> StrategySpec:
    """Add ``spec`` to :data:`STRATEGIES`."""
    return STRATEGIES.add(spec)


__all__ = ["STRATEGIES", "StrategyInputs", "StrategySpec", "register_strategy"]
