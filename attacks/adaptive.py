"""The adaptive attacker: the defense, as far as its public parameters tell, inside the replay.

With ``attack.adaptive: true`` the threat model hands the attacker the name and public
parameters of the clients' defense (:class:`~fl_shadow.threat_model.DefenseKnowledge`: the
config's ``defense`` section with its defaults filled in; never a client's random draws, keys,
shadow model or other state). :func:`defense_model` turns it into the
:class:`~fl_shadow.defenses.base.DefenseModel` that the defense itself declares
(:attr:`~fl_shadow.defenses.base.DefenseSpec.attacker_model`, in the defense's own module), and
the differentiable replay (:class:`~attacks.replay.UpdateReplay`) applies it where the client
applies the defense, so every matching attack (IG, DLG, iDLG, GradInversion, GGL, GIAS) matches
the *defended* update its candidate images would produce instead of the undefended one:

========================  =====================================================================
defense                   model (public parameters only)
========================  =====================================================================
``clipping``              each step's gradient clipped to ``max_norm`` (exact).
``dp``                    the update clipped to the received norm (at most ``clip_norm``, GGL's
                          estimate); the Gaussian noise has mean 0, so its expectation is
                          nothing to model (GGL's reading).
``sparsification``,       the received update's zero pattern masks the simulated update (GGL's
``soteria``               adaptive mode estimates the pruning rate or Soteria's zeroed FC
                          columns from the received zeros; the pattern itself is visible).
``outpost``               each step's gradient replaced by its expectation under OUTPOST's coin:
                          ``p_t prune(g) + (1 - p_t) g``, ``p_t = 1 / (1 + beta t)``; the noise has
                          mean 0.
``shadow``                expectation over the input noise (EOT): each replay draws noise maps
                          with the public peak and the public shape of an equalized map; where
                          the noise goes depends on the client's private shadow and Grad-CAM,
                          so positions are random.
``censor``, ``fedkl``,    not modelled: the shared update is a private random draw (CENSOR),
``latent_minimax``        depends on a private key (FedKL) or on private learned offsets; the
                          attack then runs as if undefended and says so in the log.
``none``                  nothing to model.
========================  =====================================================================
"""

from __future__ import annotations

import logging

import torch

from fl_shadow.defenses import DEFENSES, DefenseModel
from fl_shadow.threat_model import DefenseKnowledge

logger = logging.getLogger(__name__)


def defense_model(knowledge: DefenseKnowledge | None, received: list[torch.Tensor], *,
                  seed: int = 0) -> DefenseModel | None:
    """The attacker's model of the defense in ``knowledge``; None without knowledge.

    Args:
        knowledge: the defense's name and public parameters (None: not adaptive).
        received: the observed update, one tensor per trainable parameter.
        seed: seeds the model's random draws (EOT), so attacks stay deterministic.
    """
    if knowledge is None:
        return None
    spec = DEFENSES.get(knowledge.name)
    if spec.attacker_model is None:
        logger.warning("adaptive attack: defense %r has no public model (its output depends "
                       "on the client's private randomness, key or state); attacking as if "
                       "undefended", knowledge.name)
        return DefenseModel()
    params = spec.parse_params(knowledge.params)
    return spec.attacker_model(params, knowledge, received, seed)


__all__ = ["defense_model"]
