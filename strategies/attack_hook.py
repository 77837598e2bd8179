"""The curious server's hook: attack individual updates before they are aggregated.

For each update on a configured round and client, the hook builds the threat model's
:class:`~attacks.base.Observation` (what the server sent and received, the public training
plan, labels only if the threat model gives them) and the public :class:`~attacks.base.Prior`,
and calls the attack. Ground truth stays here, outside attack code: only after the attack has
returned does :class:`~fl_shadow.scoring.Scorer` look up the attacked images through the
client's audit record (simulation only) and score the reconstruction.

With ``attack.parallel > 1``, :meth:`AttackHook.run_all` observes a round's wanted updates
first and attacks them together as Ray tasks (:mod:`strategies.parallel_attacks`), yielding the
outcomes in the updates' order; with 1, :meth:`AttackHook.run` attacks one update in place.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from attacks import Attack, Observation, Prior, Reconstruction, bn_statistic_names, build_attack
from attacks.adaptive import describe_defense
from fl_shadow import flower_keys as keys
from fl_shadow.audit import AuditRecord, attacked_indices, decode_audit
from fl_shadow.config import ExperimentConfig
from fl_shadow.errors import ThreatModelError
from strategies.parallel_attacks import AttackJob, run_attacks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackOutcome:
    """One attacked update: who, when, and what the attack returned."""

    server_round: int
    client_id: int
    reconstruction: Reconstruction
    audit: AuditRecord | None


@dataclass(frozen=True)
class ReceivedUpdate:
    """One client's reply as the server received it (the arguments of :meth:`AttackHook.run`)."""

    client_id: int
    arrays: list[np.ndarray]
    num_examples: int
    metrics: Mapping[str, object]


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
        self.device = device
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

        # The plan the server sent, or what the attacker assumes where it does not trust it.
        plan = replace(local_training_plan(self.config, client_id),
                       **self.config.attack.assumed_training)
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
            defense=(describe_defense(self.config.defense.name, self.config.defense.params,
                                      server_round=server_round,
                                      num_rounds=self.config.train.rounds)
                     if self.config.attack.adaptive else None),
        )
        return observation, audit

    def run(self, server_round: int, client_id: int, global_arrays: list[np.ndarray],
            client_arrays: list[np.ndarray], num_examples: int,
            metrics: Mapping[str, object]) -> AttackOutcome | None:
        observation, audit = self.observe(server_round, client_id, global_arrays,
                                          client_arrays, num_examples, metrics)
        if not self._within_budget(server_round, client_id, observation):
            return None
        log.info("round %d: attacking client %d (%s, %d image(s), %d local step(s))",
                 server_round, client_id, self.attack.name, observation.num_images,
                 observation.num_local_steps)
        reconstruction = self.attack.reconstruct(observation, self.prior)
        return AttackOutcome(server_round, client_id, reconstruction, audit)

    @property
    def parallel(self) -> int:
        """How many attacks may run at once (``attack.parallel``)."""
        return self.config.attack.parallel

    def run_all(self, server_round: int, global_arrays: list[np.ndarray],
                updates: Sequence[ReceivedUpdate]) -> Iterator[AttackOutcome]:
        """Attack a round's wanted updates, :attr:`parallel` at a time, as Ray tasks.

        Every update is observed first (a threat-model error stops the round before any
        attack starts); updates over ``attack.max_images`` are skipped as in :meth:`run`.
        Outcomes come in the order of ``updates``, each as soon as it and the ones before it
        are done, with the same reconstructions :meth:`run` would give one after another.
        """
        jobs, audits = [], []
        for update in updates:
            observation, audit = self.observe(server_round, update.client_id, global_arrays,
                                              update.arrays, update.num_examples,
                                              update.metrics)
            if self._within_budget(server_round, update.client_id, observation):
                jobs.append(AttackJob(update.client_id, observation, self.prior))
                audits.append(audit)
        reconstructions = run_attacks(self.attack, jobs, parallel=self.parallel,
                                      device=self.device)
        try:
            for job, audit in zip(jobs, audits):
                yield AttackOutcome(server_round, job.client_id, next(reconstructions), audit)
        finally:
            reconstructions.close()  # stops the attacks still running if the caller gave up

    def _within_budget(self, server_round: int, client_id: int,
                       observation: Observation) -> bool:
        if observation.num_images > self.config.attack.max_images:
            log.warning("round %d client %d: update holds %d images > attack.max_images=%d; "
                        "not attacked", server_round, client_id, observation.num_images,
                        self.config.attack.max_images)
            return False
        return True


def _to_state(state_keys: list[str], arrays: list[np.ndarray]) -> dict[str, torch.Tensor]:
    if len(arrays) != len(state_keys):
        raise ValueError(f"expected {len(state_keys)} arrays, got {len(arrays)}")
    return {k: torch.as_tensor(np.asarray(a)).clone() for k, a in zip(state_keys, arrays)}

