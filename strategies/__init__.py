"""The server side: Flower's strategies, registered by name, and the curious server around them.

* :mod:`strategies.registry`: :class:`StrategySpec` and :data:`STRATEGIES`;
* :mod:`strategies.flower_strategies`: Flower's FedAvg, FedProx, FedAdam, FedYogi, FedAdagrad,
  FedAvgM, FedMedian and Krum with their params;
* :mod:`strategies.curious`: :class:`CuriousServer`, which wraps any of them (or Flower's DP
  wrappers around them) and attacks each update before aggregation;
* :mod:`strategies.attack_hook`: what the attacker is handed, per update;
* :mod:`strategies.flower_dp`: Flower's central-DP wrappers, composed inside the curious server;
* :mod:`strategies.parallel_attacks`: several attacks of a round at once, as Ray tasks.

This package imports the core (:mod:`fl_shadow`) only; the attack it runs arrives built.
"""

from strategies import flower_strategies  # noqa: F401  (registers)
from strategies.attack_hook import AttackHook, ReceivedUpdate, Skipped
from strategies.curious import Checkpointer, CuriousServer, RoundClock, UpdateObserver
from strategies.flower_dp import seed_central_noise, wrap_with_flower_dp
from strategies.registry import (
           STRATEGIES,
           StrategyInputs,
           StrategySpec,
           register_strategy,
)

__all__ = ["AttackHook", "Checkpointer", "CuriousServer", "ReceivedUpdate", "RoundClock",
           "STRATEGIES", "Skipped", "StrategyInputs", "StrategySpec", "UpdateObserver",
           "register_strategy", "seed_central_noise", "wrap_with_flower_dp"]
