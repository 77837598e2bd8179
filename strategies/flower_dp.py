"""Flower's own DP strategy wrappers, composed inside the curious server.

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
from third parties, not the clients from the server. The curious server sees this directly:
the wrappers are Flower's own classes, unchanged, placed *inside*
:class:`~strategies.curious.CuriousServer` (``CuriousServer(DP(FedAvg))``), whose
``aggregate_fit`` observes and attacks every update exactly as it arrives before handing the
round to the DP wrapper, which then clips (server side) and noises the aggregate. Flower's
server loop hands the noised aggregate to ``evaluate``: the central evaluation, the recorded
utility and the checkpoint are of the DP model, the one the federation actually continues from.

Flower's noise comes from NumPy's legacy global generator. The server seeds it from
``config.seed`` (:func:`seed_central_noise`) so that a run and its resume repeat; its state is
part of every checkpoint. Clients' local-DP noise is deliberately left unseeded (see
:mod:`clients.flower_dp_mods`).
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fl_shadow.config import FlowerDpConfig

log = logging.getLogger(__name__)

# Mixes config.seed into the server's NumPy seed, apart from any other use of the seed.
_CENTRAL_NOISE_SEED_TAG = 0xD9


def seed_central_noise(seed: int) -> None:
    """Seed NumPy's global generator, which Flower's central DP noise draws from."""
    np.random.seed(np.random.SeedSequence([seed, _CENTRAL_NOISE_SEED_TAG]).generate_state(1)[0])


def wrap_with_flower_dp(strategy: Strategy, dp: FlowerDpConfig, *, sampled_clients: int,
                        seed: int) -> Strategy:
    """Wrap ``strategy`` in the Flower DP wrapper that ``dp.mode`` asks for.

    ``none`` and ``local_dp`` (a client-side mod only) return ``strategy`` itself. The noise
    of the central modes is calibrated to ``sampled_clients``, the clients the strategy samples
    each round, as Flower's ``num_sampled_clients`` expects.
    """
    if dp.mode == "local_dp" and dp.sensitivity < dp.clipping_norm:
        log.warning("strategy.flower_dp.sensitivity %.4g < clipping_norm %.4g: LocalDpMod's "
                    "noise is calibrated below what one clipped update can change",
                    dp.sensitivity, dp.clipping_norm)
    if dp.mode in ("none", "local_dp"):
        return strategy
    wrapper = {"server_side_clipping": DifferentialPrivacyServerSideFixedClipping,
               "client_side_clipping": DifferentialPrivacyClientSideFixedClipping}[dp.mode]
    seed_central_noise(seed)
    wrapped = wrapper(strategy, noise_multiplier=dp.noise_multiplier,
                      clipping_norm=dp.clipping_norm, num_sampled_clients=sampled_clients)
    log.info("Flower DP %s: clipping norm %.4g, noise std on the aggregate %.4g (%d sampled "
             "clients)", dp.mode, dp.clipping_norm,
             dp.noise_multiplier * dp.clipping_norm / sampled_clients, sampled_clients)
    return wrapped


__all__ = ["seed_central_noise", "wrap_with_flower_dp"]
