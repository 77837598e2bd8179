"""Flower's legacy strategies, registered with their parameters (``strategy.params``).

Defaults are Flower 1.41's own. ``eta_l`` of the FedOpt family is not exposed: Flower only
stores it (it never reaches a client); the clients' learning rate is ``train.lr``.

===============  ======================================================  =====================
``strategy.name``  method                                                  ``strategy.params``
===============  ======================================================  =====================
``fedavg``       FedAvg (McMahan et al. 2017)                            none
``fedprox``      FedAvg + proximal term ``mu/2 ||w - w_global||^2`` in   ``proximal_mu``
                 each client's local loss (Li et al. 2020)
``fedadam``      server-side Adam on the averaged update (Reddi et al.    ``eta``, ``beta_1``,
                 2021)                                                   ``beta_2``, ``tau``
``fedyogi``      server-side Yogi (Reddi et al. 2021)                    as ``fedadam``
``fedadagrad``   server-side Adagrad (Reddi et al. 2021)                 ``eta``, ``tau``
``fedavgm``      FedAvg with server momentum (Hsu et al. 2019)           ``server_learning_rate``,
                                                                         ``server_momentum``
``fedmedian``    coordinate-wise median (Yin et al. 2018)                none
``krum``         (Multi-)Krum (Blanchard et al. 2017)                    ``num_malicious_clients``,
                                                                         ``num_clients_to_keep``
===============  ======================================================  =====================
"""

from __future__ import annotations

from typing import Annotated

from flwr.server.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedYogi,
    Krum,
)
from pydantic import Field

from fl_shadow.config import ExperimentConfig, Float, Int, settings
from fl_shadow.errors import ConfigError
from strategies.registry import StrategyInputs, StrategySpec, register_strategy


@settings
class NoParams:
    """The strategy takes no parameters."""


@settings
class FedProxParams:
    """Attributes:
        proximal_mu: weight ``mu`` of the proximal term (0 gives FedAvg; the paper tries
            0.001 to 1).
    """

    proximal_mu: Annotated[Float, Field(ge=0, le=1e4)] = 0.01


@settings
class FedAdamParams:
    """Attributes:
        eta: server learning rate.
        beta_1: first-moment decay.
        beta_2: second-moment decay.
        tau: adaptivity (added to the root of the second moment).
    """

    eta: Annotated[Float, Field(gt=0)] = 0.1
    beta_1: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    beta_2: Annotated[Float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[Float, Field(gt=0)] = 1e-9


@settings
class FedYogiParams:
    """Attributes: as :class:`FedAdamParams` (Flower's FedYogi defaults)."""

    eta: Annotated[Float, Field(gt=0)] = 1e-2
    beta_1: Annotated[Float, Field(ge=0, lt=1)] = 0.9
    beta_2: Annotated[Float, Field(ge=0, lt=1)] = 0.99
    tau: Annotated[Float, Field(gt=0)] = 1e-3


@settings
class FedAdagradParams:
    """Attributes:
        eta: server learning rate.
        tau: adaptivity.
    """

    eta: Annotated[Float, Field(gt=0)] = 0.1
    tau: Annotated[Float, Field(gt=0)] = 1e-9


@settings
class FedAvgMParams:
    """Attributes:
        server_learning_rate: step on the averaged update (1 with no momentum is FedAvg).
        server_momentum: momentum of the server step.
    """

    server_learning_rate: Annotated[Float, Field(gt=0)] = 1.0
    server_momentum: Annotated[Float, Field(ge=0, lt=1)] = 0.0


@settings
class KrumParams:
    """Attributes:
        num_malicious_clients: ``f``, the clients Krum tolerates (scores sum the distances to
            the ``n - f - 2`` closest updates).
        num_clients_to_keep: Multi-Krum: average this many best-scored updates; 0 keeps the
            single best (Krum).
    """

    num_malicious_clients: Annotated[Int, Field(ge=0)] = 0
    num_clients_to_keep: Annotated[Int, Field(ge=0)] = 0


def _check_krum(params: KrumParams, config: ExperimentConfig) -> None:
    sampled = config.strategy.min_fit_clients
    if params.num_clients_to_keep > sampled:
        raise ConfigError(f"strategy.params.num_clients_to_keep: expected at most "
                          f"strategy.min_fit_clients ({sampled}), got "
                          f"{params.num_clients_to_keep}")
    if params.num_malicious_clients >= config.partition.num_clients:
        raise ConfigError(f"strategy.params.num_malicious_clients: expected fewer than "
                          f"partition.num_clients ({config.partition.num_clients}), got "
                          f"{params.num_malicious_clients}")


def _fedavg(p: NoParams, inputs: StrategyInputs) -> FedAvg:
    return FedAvg(**inputs.kwargs())


def _fedprox(p: FedProxParams, inputs: StrategyInputs) -> FedProx:
    return FedProx(**inputs.kwargs(), proximal_mu=p.proximal_mu)


def _fedadam(p: FedAdamParams, inputs: StrategyInputs) -> FedAdam:
    return FedAdam(**inputs.kwargs(), eta=p.eta, beta_1=p.beta_1, beta_2=p.beta_2, tau=p.tau)


def _fedyogi(p: FedYogiParams, inputs: StrategyInputs) -> FedYogi:
    return FedYogi(**inputs.kwargs(), eta=p.eta, beta_1=p.beta_1, beta_2=p.beta_2, tau=p.tau)


def _fedadagrad(p: FedAdagradParams, inputs: StrategyInputs) -> FedAdagrad:
    return FedAdagrad(**inputs.kwargs(), eta=p.eta, tau=p.tau)


def _fedavgm(p: FedAvgMParams, inputs: StrategyInputs) -> FedAvgM:
    return FedAvgM(**inputs.kwargs(), server_learning_rate=p.server_learning_rate,
                   server_momentum=p.server_momentum)


def _fedmedian(p: NoParams, inputs: StrategyInputs) -> FedMedian:
    return FedMedian(**inputs.kwargs())


def _krum(p: KrumParams, inputs: StrategyInputs) -> Krum:
    return Krum(**inputs.kwargs(), num_malicious_clients=p.num_malicious_clients,
                num_clients_to_keep=p.num_clients_to_keep)


# FedOpt keeps the current global weights and both moments between rounds (m_t/v_t start as
# None, current_weights as the initial parameters, which a resume sets to the checkpoint's).
_FEDOPT_STATE = ("m_t", "v_t")

for _spec in (
    StrategySpec("fedavg", _fedavg, NoParams, "FedAvg (McMahan et al. 2017)"),
    StrategySpec("fedprox", _fedprox, FedProxParams, "FedProx (Li et al. 2020)",
                 proximal_mu=lambda p: p.proximal_mu),
    StrategySpec("fedadam", _fedadam, FedAdamParams, "FedAdam (Reddi et al. 2021)",
                 server_state=_FEDOPT_STATE),
    StrategySpec("fedyogi", _fedyogi, FedYogiParams, "FedYogi (Reddi et al. 2021)",
                 server_state=_FEDOPT_STATE),
    StrategySpec("fedadagrad", _fedadagrad, FedAdagradParams, "FedAdagrad (Reddi et al. 2021)",
                 server_state=_FEDOPT_STATE),
    StrategySpec("fedavgm", _fedavgm, FedAvgMParams, "FedAvgM (Hsu et al. 2019)",
                 server_state=("momentum_vector",)),
    StrategySpec("fedmedian", _fedmedian, NoParams, "FedMedian (Yin et al. 2018)"),
    StrategySpec("krum", _krum, KrumParams, "Krum (Blanchard et al. 2017)", check=_check_krum),
):
    register_strategy(_spec)

__all__ = ["FedAdagradParams", "FedAdamParams", "FedAvgMParams", "FedProxParams",
           "FedYogiParams", "KrumParams", "NoParams"]
