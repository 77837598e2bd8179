"""Flower's own DP strategy wrappers around the curious FedAvg, attacked as the wire delivers.

Flower 1.41 ships three DP setups for the legacy Strategy API (``strategy.flower_dp.mode``):

* ``server_side_clipping``: :class:`flwr.server.strategy.DifferentialPrivacyServerSideFixedClipping`
  receives every client's *raw* update, clips each to ``clipping_norm``, averages, then adds
  Gaussian noise of std ``noise_multiplier * clipping_norm / num_sampled_clients`` to the
  aggregate (McMahan et al. 2018, arXiv:1710.06963).
* ``client_side_clipping``: :class:`flwr.server.strategy.DifferentialPrivacyClientSideFixedClipping`
  sends ``clipping_norm`` in the fit config; the client mod ``fixedclipping_mod``
  (:mod:`clients.flower_dp_mods`) clips the update before it leaves the client; the server
  adds the same noise to the aggregate. The server receives *clipped, noiseless* updates.
* ``local_dp``: no server wrapper; ``LocalDpMod`` on the client clips the update and adds
  Gaussian noise to it (:mod:`clients.flower_dp_mods`). The server receives *noised* updates.

The central wrappers add their noise after aggregation, so they protect the released model
from third parties, not the clients from the server. The curious server of this project
attacks each update exactly as it arrives: the subclasses below call
:meth:`CuriousFedAvg.observe_updates` first in ``aggregate_fit``, before Flower's wrapper
clips (server side) and before any noise is added; the inner strategy's own call is then a
no-op. Everything else (round offset when resuming, fit config, central evaluation,
checkpoints) stays in :class:`CuriousFedAvg`, which the wrappers delegate to. The wrappers
replace the aggregate with its noised version, and Flower's server loop hands that to
``evaluate``: the central evaluation, the recorded utility and the checkpoint are of the DP
model, the one the federation actually continues from.

Flower's noise comes from NumPy's legacy global generator. The server seeds it from
``config.seed`` (:func:`seed_central_noise`) so that a run and its resume repeat; its state is
part of every checkpoint. Clients' local-DP noise is deliberately left unseeded (see
:mod:`clients.flower_dp_mods`).
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.common import FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fl_shadow.config import FlowerDpConfig
from strategies.curious_fedavg import CuriousFedAvg

log = logging.getLogger(__name__)

# Mixes config.seed into the server's NumPy seed, apart from any other use of the seed.
_CENTRAL_NOISE_SEED_TAG = 0xD9


class _ObservesBeforeDp:
    """What both central wrappers add: attack first, forward the attributes the app reads."""

    strategy: CuriousFedAvg

    @property
    def curious(self) -> CuriousFedAvg:
        """The wrapped curious FedAvg (recorder, attack hook, round offset)."""
        return self.strategy

    @property
    def remaining_rounds(self) -> int:
        """Rounds Flower still has to run (:attr:`CuriousFedAvg.remaining_rounds`)."""
        return self.strategy.remaining_rounds

    def _observe(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                 failures: list[tuple[ClientProxy, FitRes] | BaseException]
                 ) -> list[tuple[ClientProxy, FitRes]]:
        try:
            return self.strategy.observe_updates(server_round, results, failures)
        except BaseException as exc:
            self.strategy.recorder.fail(exc)
            raise


class CuriousServerSideFixedClipping(_ObservesBeforeDp, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side-clipping central DP; the server attacks the raw updates first."""

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        results = self._observe(server_round, results, failures)
        return super().aggregate_fit(server_round, results, failures)


class CuriousClientSideFixedClipping(_ObservesBeforeDp, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side-clipping central DP; the server attacks the clipped updates."""

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: list[tuple[ClientProxy, FitRes] | BaseException]
                      ) -> tuple[Parameters | None, dict[str, Scalar]]:
        results = self._observe(server_round, results, failures)
        return super().aggregate_fit(server_round, results, failures)


FlowerDpStrategy = CuriousServerSideFixedClipping | CuriousClientSideFixedClipping


def seed_central_noise(seed: int) -> None:
    """Seed NumPy's global generator, which Flower's central DP noise draws from."""
    np.random.seed(np.random.SeedSequence([seed, _CENTRAL_NOISE_SEED_TAG]).generate_state(1)[0])


def wrap_with_flower_dp(strategy: CuriousFedAvg, dp: FlowerDpConfig, *, num_clients: int,
                        seed: int) -> CuriousFedAvg | FlowerDpStrategy:
    """Wrap ``strategy`` in the Flower DP wrapper that ``dp.mode`` asks for.

    ``none`` and ``local_dp`` (a client-side mod only) return ``strategy`` itself. The noise
    of the central modes is calibrated to the clients FedAvg samples each round out of
    ``num_clients``, as Flower's ``num_sampled_clients`` expects.
    """
    if dp.mode == "local_dp" and dp.sensitivity < dp.clipping_norm:
        log.warning("strategy.flower_dp.sensitivity %.4g < clipping_norm %.4g: LocalDpMod's "
                    "noise is calibrated below what one clipped update can change",
                    dp.sensitivity, dp.clipping_norm)
    if dp.mode in ("none", "local_dp"):
        return strategy
    wrapper = {"server_side_clipping": CuriousServerSideFixedClipping,
               "client_side_clipping": CuriousClientSideFixedClipping}[dp.mode]
    sampled, _ = strategy.num_fit_clients(num_clients)
    seed_central_noise(seed)
    wrapped = wrapper(strategy, noise_multiplier=dp.noise_multiplier,
                      clipping_norm=dp.clipping_norm, num_sampled_clients=sampled)
    log.info("Flower DP %s: clipping norm %.4g, noise std on the aggregate %.4g (%d sampled "
             "clients)", dp.mode, dp.clipping_norm,
             dp.noise_multiplier * dp.clipping_norm / sampled, sampled)
    return wrapped

