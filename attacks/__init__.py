"""Gradient inversion attacks run by the curious server, declared in :data:`ATTACKS`.

Adding an attack: one module here with a class that has ``reconstruct(observation, prior)``,
its params dataclass (:func:`fl_shadow.config.settings`) and ``@register_attack("name",
Params, max_images=..., needs=...)`` on the class, plus its name in the import line below.

Importing this package registers every attack module. The flat API::

    from attacks import build_attack, Observation, Prior
    attack = build_attack("inverting_gradients", {"iterations": 400}, device=cpu, seed=0)
    reconstruction = attack.reconstruct(observation, prior)
"""

import fl_shadow  # noqa: F401  (first: OMP_WAIT_POLICY before torch loads; fl_shadow.threads)
from attacks import dlg, ggl, gias, gradinversion, idlg, inverting_gradients, none  # noqa: F401  (registers)
from attacks.adaptive import defense_model
from attacks.base import (
    ATTACKS,
    Attack,
    AttackSpec,
    DefenseKnowledge,
    Observation,
    Prior,
    Reconstruction,
    ThreatModelNeeds,
    bn_statistic_names,
    build_attack,
    check_threat_model,
    labels_if_required,
    register_attack,
)
from attacks.bn_prior import BatchNormRecorder, BatchNormReference, bn_prior
from attacks.dlg import DLG, DLGParams
from attacks.ggl import GGL, GGLParams
from attacks.gias import GIAS, GIASParams
from attacks.gradinversion import GradInversion, GradInversionParams
from attacks.idlg import IDLG, IDLGParams
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
from attacks.matching import MatchingProblem, prepare_matching
from attacks.objectives import cosine_cost, l2_cost, layer_weights, total_variation
from attacks.replay import UpdateReplay, simulate_update, step_slots

__all__ = [
    "ATTACKS", "Attack", "AttackSpec", "BatchNormRecorder", "BatchNormReference", "DLG",
    "DLGParams", "DefenseKnowledge", "GGL", "GGLParams", "GIAS", "GIASParams",
    "GradInversion", "GradInversionParams", "IDLG", "IDLGParams",
    "InvertingGradients", "InvertingGradientsParams", "MatchingProblem", "Observation", "Prior",
    "Reconstruction", "ThreatModelNeeds", "UpdateReplay", "bn_prior", "bn_statistic_names",
    "build_attack", "check_threat_model", "cosine_cost", "defense_model", "l2_cost",
    "label_placements", "labels_if_required",
    "layer_weights", "lr_milestones", "prepare_matching", "recover_label_idlg",
    "recover_labels", "recover_labels_bias_corrected", "recover_labels_from_update",
    "recover_labels_support", "recover_labels_yin", "register_attack", "remove_weight_decay",
    "simulate_update", "step_slots", "total_variation",
]
