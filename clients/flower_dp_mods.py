"""The client half of Flower's own DP, chosen per message from the experiment config.

Flower's mods are fixed when the ``ClientApp`` is built, but this project's experiment config
arrives with each fit message (YAML text under :data:`fl_shadow.flower_keys.EXPERIMENT`), so
the ClientApp carries one mod, :func:`flower_dp_mod`, that reads ``strategy.flower_dp`` from
the message and runs Flower's own mod around the client:

* ``client_side_clipping``: ``flwr.client.mod.fixedclipping_mod`` (clips the update to the
  ``clipping_norm`` that ``DifferentialPrivacyClientSideFixedClipping`` puts in the fit
  config);
* ``local_dp``: ``flwr.client.mod.LocalDpMod(clipping_norm, sensitivity, epsilon, delta)``
  (clips, then adds Gaussian noise to every value sent);
* ``none`` / ``server_side_clipping``: nothing (the client sends its update as it is).

Flower's mods act on what the client returns, so they run after the client's own defense
(``defense.name``), on the update it would otherwise send.

LocalDpMod draws its noise from NumPy's global generator, which is left as the process has it
(seeded from OS entropy) on purpose: seeding it from the experiment's seed, client and round,
as the clients seed their training, would let the server, which knows all three, regenerate
the noise and subtract it.
"""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.app.message_type import MessageType
from flwr.client.mod import LocalDpMod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod
from flwr.compat.common import recorddict_compat as compat

from fl_shadow import flower_keys as keys
from fl_shadow.config import FlowerDpConfig, load_config_dict, parse_yaml
from fl_shadow.errors import ConfigError, ProtocolError


@functools.lru_cache(maxsize=4)
def _flower_dp_of(experiment_yaml: str) -> FlowerDpConfig:
    try:
        return load_config_dict(parse_yaml(experiment_yaml, "the server's experiment config")
                                ).strategy.flower_dp
    except ConfigError as exc:
        raise ProtocolError(f"the server's experiment config is not valid here: {exc}") from None


@functools.lru_cache(maxsize=8)
def client_mod(dp: FlowerDpConfig) -> Mod | None:
    """Flower's client mod for ``dp.mode``, or None when the client sends its update as is."""
    if dp.mode == "client_side_clipping":
        return fixedclipping_mod
    if dp.mode == "local_dp":
        return LocalDpMod(clipping_norm=dp.clipping_norm, sensitivity=dp.sensitivity,
                          epsilon=dp.epsilon, delta=dp.delta)
    return None


def flower_dp_mod(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Run the experiment's Flower DP mod (if any) around a train message.

    Raises:
        ProtocolError: a train message without the experiment config.
    """
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, ctxt)
    config = compat.recorddict_to_fitins(msg.content, keep_input=True).config
    if keys.EXPERIMENT not in config:
        raise ProtocolError(f"the server sent no {keys.EXPERIMENT!r} in the fit config: this "
                            "client needs the experiment config (YAML text) with every "
                            "message, as the fl_shadow ServerApp sends it (README: 'Message "
                            "protocol')")
    mod = client_mod(_flower_dp_of(str(config[keys.EXPERIMENT])))
    return call_next(msg, ctxt) if mod is None else mod(msg, ctxt, call_next)
