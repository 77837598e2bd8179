"""Gradient inversion attacks run by the curious server, registered by name in :data:`ATTACKS`.

Importing this package registers every attack module. The flat API::

    from attacks import build_attack, Observation, Prior
    attack = build_attack("inverting_gradients", {"iterations": 400}, device=cpu, seed=0)
    reconstruction = attack.reconstruct(observation, prior)
"""

from attacks import inverting_gradients  # noqa: F401  (registers)
from attacks.base import (
    ATTACKS,
    Attack,
    AttackSpec,
    Observation,
    Prior,
    Reconstruction,
    build_attack,
    register_attack,
)
from attacks.inverting_gradients import (
    InvertingGradients,
    InvertingGradientsParams,
    label_placements,
    lr_milestones,
)
from attacks.label_recovery import (
    recover_label_idlg,
    recover_labels,
    recover_labels_bias_corrected,
    recover_labels_from_update,
    recover_labels_support,
    recover_labels_yin,
    remove_weight_decay,
)
from attacks.objectives import cosine_cost, l2_cost, layer_weights, total_variation
from attacks.replay import UpdateReplay, simulate_update, step_slots

__all__ = [
    "ATTACKS", "Attack", "AttackSpec", "InvertingGradients", "InvertingGradientsParams",
    "Observation", "Prior", "Reconstruction", "UpdateReplay", "build_attack", "cosine_cost",
    "l2_cost", "label_placements", "layer_weights", "lr_milestones", "recover_label_idlg",
    "recover_labels", "recover_labels_bias_corrected", "recover_labels_from_update",
    "recover_labels_support", "recover_labels_yin", "register_attack", "remove_weight_decay",
    "simulate_update", "step_slots", "total_variation",
]
