"""The curious server's hook: attack individual updates before they are aggregated.

For each update on a configured round and client, the hook builds the threat model's
:class:`~fl_shadow.threat_model.Observation` (what the server sent and received, the public
training plan, labels only if the threat model gives them) and hands it, with the public
:class:`~fl_shadow.threat_model.Prior`, to the attack it was given. Ground truth stays here,
outside attack code: the audit record (simulation only) is decoded and kept next to the
outcome, for the scorer, after the attack has returned.

The hook knows nothing of attacks' or clients' code: the attack arrives built (the federation
builder, :mod:`fl_shadow.apps.federation`, makes it from the registry), the training plan as a
function of the client (:func:`fl_shadow.training.local_training_plan`, the same one the
clients train with).

With ``attack.parallel > 1``, :meth:`AttackHook.run_all` observes a round's wanted updates
first and attacks them together as Ray tasks (:mod:`strategies.parallel_attacks`), yielding the
outcomes in the updates' order; with 1, :meth:`AttackHook.run` attacks one update in place.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from fl_shadow import flower_keys as keys
from fl_shadow.audit import AuditRecord, attacked_indices, decode_audit
from fl_shadow.config import AttackConfig
from fl_shadow.cross_round import combine_rounds
from fl_shadow.errors import ThreatModelError
from fl_shadow.threat_model import (
    Attack,
    AttackOutcome,
    DefenseKnowledge,
    Observation,
    Prior,
    Reconstruction,
    bn_statistic_names,
)
from fl_shadow.training import LocalTraining
from strategies.parallel_attacks import AttackJob, run_attacks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedUpdate:
    """One client's reply as the server received it.

    Attributes:
        client_id: the client's partition id, or its Flower node id when it reports none.
        arrays: the uploaded ``state_dict`` arrays, in the order parameters travel.
        num_examples: the example count it reported.
        metrics: its fit metrics (the audit record among them, in simulation).
        has_partition_id: False for a client that reported no partition id (named by node).
    """

    client_id: int
    arrays: list[np.ndarray]
    num_examples: int
    metrics: Mapping[str, object]
    has_partition_id: bool = True


@dataclass(frozen=True)
class Skipped:
    """An update the hook wanted but did not attack, and why (a ``skipped`` privacy row)."""

    server_round: int
    client_id: int
    reason: str


class AttackHook:
    """Runs the given attack on the updates the threat model exposes.

    Args:
        attack: the built attack.
        prior: public knowledge handed to the attack.
        selection: the ``attack`` section: rounds, clients, labels, BatchNorm statistics,
            ``max_images``, ``assumed_training``, ``parallel``.
        num_rounds: the run's total rounds (``attack.rounds: [-1]`` is the last).
        plan_for: the local-training plan the server sends client ``c`` (its batch size from
            the partition, the strategy's proximal weight).
        state_keys: the model's ``state_dict`` keys, in the order parameters travel.
        label_lookup: maps global train indices to labels; used only when the threat model
            gives labels to the attacker (``attack.labels: given``).
        defense_knowledge: the clients' defense as an adaptive attacker knows it, for a round
            and the client's reported number of examples (None: the attacker is not
            adaptive).
        device: where the attack runs.
    """

    def __init__(self, attack: Attack, prior: Prior, *, selection: AttackConfig,
                 num_rounds: int, plan_for: Callable[[int], LocalTraining],
                 state_keys: Sequence[str], label_lookup: torch.Tensor | None,
                 defense_knowledge: Callable[[int, int], DefenseKnowledge] | None,
                 device: torch.device) -> None:
        self.attack = attack
        self.prior = prior
        self.selection = selection
        self.num_rounds = num_rounds
        self.plan_for = plan_for
        self.state_keys = list(state_keys)
        self.label_lookup = label_lookup
        self.defense_knowledge = defense_knowledge
        self.device = device
        architecture = prior.model_factory()
        # The architecture's dtypes: a server optimizer (FedAdam, ...) can hand float64 arrays
        # around; the clients cast what they receive to their model's dtypes, and so does this.
        self.dtypes = {k: v.dtype for k, v in architecture.state_dict().items()}
        # Keys the threat model removes from the client's upload before the attack sees it.
        self.withheld = (set(bn_statistic_names(architecture))
                         if selection.bn_statistics == "withheld" else set())
        self._unnamed_warned: set[int] = set()
        # attack.combine_rounds: each client's earlier reconstructions (as the attack made
        # them, before combining), in round order.
        self._earlier: dict[int, list[torch.Tensor]] = {}

    @property
    def parallel(self) -> int:
        """How many attacks may run at once (``attack.parallel``)."""
        return self.selection.parallel

    def wants(self, server_round: int, update: ReceivedUpdate) -> bool:
        """Whether ``update`` (of ``server_round``) is attacked; warns once per unnamed node
        that a list of ``attack.clients`` cannot select."""
        s = self.selection
        if not s.attacks_round(server_round, self.num_rounds):
            return False
        if not update.has_partition_id and s.clients:
            if update.client_id not in self._unnamed_warned:
                self._unnamed_warned.add(update.client_id)
                log.warning("node %d reports no partition id, so attack.clients %s cannot "
                            "select it: not attacked (leave attack.clients empty to attack "
                            "every client)", update.client_id, list(s.clients))
            return False
        return s.attacks_client(update.client_id)

    def observe(self, server_round: int, global_arrays: Sequence[np.ndarray],
                update: ReceivedUpdate) -> tuple[Observation, AuditRecord | None]:
        """Build what the attacker sees; returns the observation and the (withheld) audit."""
        # The plan the server sent, or what the attacker assumes where it does not trust it.
        plan = replace(self.plan_for(update.client_id), **self.selection.assumed_training)
        audit = (decode_audit(str(update.metrics[keys.AUDIT]))
                 if keys.AUDIT in update.metrics else None)
        labels = None
        if self.selection.labels == "given":
            if audit is None or self.label_lookup is None:
                raise ThreatModelError("attack.labels is 'given' but no labels are available "
                                       "to the server (deployment sends no audit record)")
            labels = self.label_lookup[attacked_indices(audit)]
        observation = Observation(
            global_state=to_state(self.state_keys, global_arrays, self.dtypes),
            client_state={k: v for k, v in
                          to_state(self.state_keys, update.arrays, self.dtypes).items()
                          if k not in self.withheld},
            num_examples=update.num_examples,
            training=plan,
            num_images=plan.num_distinct_images(update.num_examples),
            labels=labels,
            server_round=server_round,
            defense=(self.defense_knowledge(server_round, update.num_examples)
                     if self.defense_knowledge is not None else None),
        )
        return observation, audit

    def run(self, server_round: int, global_arrays: Sequence[np.ndarray],
            update: ReceivedUpdate) -> AttackOutcome | Skipped:
        """Attack one update in this thread."""
        observation, audit = self.observe(server_round, global_arrays, update)
        skipped = self._over_budget(server_round, update.client_id, observation)
        if skipped is not None:
            return skipped
        log.info("round %d: attacking client %d (%s, %d image(s), %d local step(s))",
                 server_round, update.client_id, self.attack.name, observation.num_images,
                 observation.num_local_steps)
        reconstruction = self._combined(update.client_id,
                                        self.attack.reconstruct(observation, self.prior))
        return AttackOutcome(server_round, update.client_id, reconstruction, audit)

    def _combined(self, client_id: int, reconstruction: Reconstruction) -> Reconstruction:
        """With ``attack.combine_rounds``, this reconstruction combined with the client's
        earlier ones (:func:`fl_shadow.cross_round.combine_rounds`); otherwise unchanged."""
        if not self.selection.combine_rounds:
            return reconstruction
        earlier = self._earlier.setdefault(client_id, [])
        images = combine_rounds(reconstruction.images, earlier)
        usable = sum(e.shape == reconstruction.images.shape for e in earlier)
        earlier.append(reconstruction.images.detach().clone())
        return replace(reconstruction, images=images,
                       info={**reconstruction.info, "combined_rounds": float(usable + 1)})

    def run_all(self, server_round: int, global_arrays: Sequence[np.ndarray],
                updates: Sequence[ReceivedUpdate]) -> Iterator[AttackOutcome | Skipped]:
        """Attack a round's wanted updates, :attr:`parallel` at a time, as Ray tasks.

        Every update is observed first (a threat-model error stops the round before any
        attack starts); updates over ``attack.max_images`` are skipped as in :meth:`run`.
        Results come in the order of ``updates``, each as soon as it and the ones before it
        are done, with the same reconstructions :meth:`run` would give one after another.
        """
        jobs, audits, order = [], [], []
        for update in updates:
            observation, audit = self.observe(server_round, global_arrays, update)
            skipped = self._over_budget(server_round, update.client_id, observation)
            if skipped is None:
                jobs.append(AttackJob(update.client_id, observation, self.prior))
                audits.append(audit)
            order.append(skipped)
        reconstructions = run_attacks(self.attack, jobs, parallel=self.parallel,
                                      device=self.device)
        try:
            done = iter(zip(jobs, audits))
            for skipped in order:
                if skipped is not None:
                    yield skipped
                    continue
                job, audit = next(done)
                yield AttackOutcome(server_round, job.client_id,
                                    self._combined(job.client_id, next(reconstructions)), audit)
        finally:
            reconstructions.close()  # stops the attacks still running if the caller gave up

    def _over_budget(self, server_round: int, client_id: int,
                     observation: Observation) -> Skipped | None:
        limit = self.selection.max_images
        if observation.num_images > limit:
            reason = (f"the update holds {observation.num_images} images > attack.max_images="
                      f"{limit}")
            log.warning("round %d client %d: %s; not attacked", server_round, client_id, reason)
            return Skipped(server_round, client_id, reason)
        return None


def to_state(state_keys: Sequence[str], arrays: Sequence[np.ndarray],
             dtypes: Mapping[str, torch.dtype] | None = None) -> dict[str, torch.Tensor]:
    """Flower's array list -> a ``state_dict`` (copies), cast to ``dtypes`` where given."""
    if len(arrays) != len(state_keys):
        raise ValueError(f"expected {len(state_keys)} arrays, got {len(arrays)}")
    out = {k: torch.as_tensor(np.asarray(a)).clone() for k, a in zip(state_keys, arrays)}
    if dtypes is not None:
        out = {k: v.to(dtypes[k]) if k in dtypes else v for k, v in out.items()}
    return out


__all__ = ["AttackHook", "ReceivedUpdate", "Skipped", "to_state"]
