"""The curious server's hook: attack individual updates before they are aggregated.

For each update on a configured round and client, the hook builds the threat model's
:class:`~attacks.base.Observation` (what the server sent and received, the public training
plan, labels only if the threat model gives them) and the public :class:`~attacks.base.Prior`,
and calls the attack. Ground truth stays here, outside attack code: only after the attack has
returned does :class:`~fl_shadow.scoring.Scorer` look up the attacked images through the
client's audit record (simulation only) and score the reconstruction.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from attacks import Attack, Observation, Prior, Reconstruction, bn_statistic_names, build_attack
from fl_shadow import flower_keys as keys
from fl_shadow.audit import AuditRecord, attacked_indices, decode_audit
from fl_shadow.config import ExperimentConfig
from fl_shadow.errors import ThreatModelError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackOutcome:
    """One attacked update: who, when, and what the attack returned."""

    server_round: int
    client_id: int
    reconstruction: Reconstruction
    audit: AuditRecord | None


class AttackHook:
    """Runs the configured attack on the updates the threat model exposes.

    Args:
        config: the experiment config (``attack`` section decides rounds, clients, labels).
        prior: public knowledge handed to the attack.
        state_keys: the model's ``state_dict`` keys, in the order parameters travel.
        label_lookup: maps global train indices to labels; used only when the threat model
            gives labels to the attacker (``attack.labels: given``).
        device: where the attack runs.
    """

    def __init__(self, config: ExperimentConfig, prior: Prior, state_keys: list[str], *,
                 label_lookup: torch.Tensor | None, device: torch.device) -> None:
        self.config = config
        self.prior = prior
        self.state_keys = state_keys
        self.label_lookup = label_lookup
        self.attack: Attack = build_attack(config.attack.name, config.attack.params,
                                           device=device, seed=config.seed)
        # Keys the threat model removes from the client's upload before the attack sees it.
        self.withheld = (set(bn_statistic_names(prior.model_factory()))
                         if config.attack.bn_statistics == "withheld" else set())

    def wants(self, server_round: int, client_id: int) -> bool:
        a = self.config.attack
        return a.attacks_round(server_round, self.config.train.rounds) and \
            a.attacks_client(client_id)

    def observe(self, server_round: int, client_id: int, global_arrays: list[np.ndarray],
                client_arrays: list[np.ndarray], num_examples: int,
                metrics: Mapping[str, object]) -> tuple[Observation, AuditRecord | None]:
        """Build what the attacker sees; returns the observation and the (withheld) audit."""
        from clients.defended import local_training_plan

        plan = local_training_plan(self.config, client_id)
        audit = decode_audit(str(metrics[keys.AUDIT])) if keys.AUDIT in metrics else None
        labels = None
        if self.config.attack.labels == "given":
            if audit is None or self.label_lookup is None:
                raise ThreatModelError("attack.labels is 'given' but no labels are available "
                                       "to the server (deployment sends no audit record)")
            labels = self.label_lookup[attacked_indices(audit)]
        observation = Observation(
            global_state=_to_state(self.state_keys, global_arrays),
            client_state={k: v for k, v in _to_state(self.state_keys, client_arrays).items()
                          if k not in self.withheld},
            num_examples=num_examples,
            training=plan,
            num_images=plan.num_distinct_images(num_examples),
            labels=labels,
            server_round=server_round,
        )
        return observation, audit

    def run(self, server_round: int, client_id: int, global_arrays: list[np.ndarray],
            client_arrays: list[np.ndarray], num_examples: int,
            metrics: Mapping[str, object]) -> AttackOutcome | None:
        observation, audit = self.observe(server_round, client_id, global_arrays,
                                          client_arrays, num_examples, metrics)
        if observation.num_images > self.config.attack.max_images:
            log.warning("round %d client %d: update holds %d images > attack.max_images=%d; "
                        "not attacked", server_round, client_id, observation.num_images,
                        self.config.attack.max_images)
            return None
        log.info("round %d: attacking client %d (%s, %d image(s), %d local step(s))",
                 server_round, client_id, self.attack.name, observation.num_images,
                 observation.num_local_steps)
        reconstruction = self.attack.reconstruct(observation, self.prior)
        return AttackOutcome(server_round, client_id, reconstruction, audit)


def _to_state(state_keys: list[str], arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    if len(arrays) != len(state_keys):
        raise ValueError(f"expected {len(state_keys)} arrays, got {len(arrays)}")
    return {k: torch.as_tensor(np.asarray(a)).clone() for k, a in zip(state_keys, arrays)}

