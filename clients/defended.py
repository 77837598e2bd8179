"""The defended hospital client: Flower ``NumPyClient`` that trains through a defense.

One round (``fit``): load the global weights, build the defense from the experiment config,
restore the defense's per-client state, let the defense wrap the model / perturb each batch /
transform each step's gradient (:func:`fl_shadow.training.train_locally`), let it transform the
whole update, save its state, and send back ``global + protected update`` with metrics.

In simulation the client also sends an *audit record* (the global indices of the images it
trained on, per step) so the server can score reconstructions after the attack; the attack code
never receives it. In deployment (``simulation=False``) no audit record leaves the client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from flwr.app import ArrayRecord, Context
from flwr.client import NumPyClient

from fl_shadow import flower_keys as keys
from fl_shadow.audit import encode_audit
from fl_shadow.defenses import Defense, DefenseContext
from fl_shadow.errors import ProtocolError
from fl_shadow.metrics import accuracy, macro_f1
from fl_shadow.training import LocalTraining, evaluate_loss, predict, train_locally

if TYPE_CHECKING:
    from fl_shadow.generative import ImageGenerator

log = logging.getLogger(__name__)

DEFENSE_STATE_KEY = "defense-state"


@dataclass(frozen=True)
class LocalData:
    """A client's own images.

    Attributes:
        images: ``(N, C, H, W)`` in [0, 1].
        labels: ``(N,)``.
        global_indices: each image's index in the federation's train split (simulation), used
            only for the audit record.
        mean, std: input normalization.
        num_classes: number of labels.
        eval_images, eval_labels: held-out images the client evaluates the global model on
            (simulation: the federation's test split; deployment: the node's own test split);
            None: evaluate on the local training images.
    """

    images: torch.Tensor
    labels: torch.Tensor
    global_indices: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    eval_images: torch.Tensor | None = None
    eval_labels: torch.Tensor | None = None


class DefendedClient(NumPyClient):
    """A hospital: local data, a defense, and local training.

    Built by the federation builder (:meth:`fl_shadow.apps.federation.Federation.client`) from
    the experiment config; every argument is one fact the client needs.

    Args:
        client_id: partition id (simulation) or the hospital's number (deployment).
        data: the client's local images.
        plan: the local-training plan (:func:`fl_shadow.training.local_training_plan`), the
            same the curious server's attack replays.
        model_factory: builds the task model (:class:`fl_shadow.models.ModelArchitecture`).
        defense_factory: builds the round's defense (validated params inside).
        seed: the experiment seed; each round's randomness comes from
            ``(seed, client_id, round)``.
        device: where training runs.
        context: Flower's node context; the defense's state is kept in ``context.state``
            between rounds (None: no state kept).
        send_audit: attach the audit record to the metrics (simulation only).
        public_generator: the experiment's public-data generator, for generative defenses.
    """

    def __init__(self, *, client_id: int, data: LocalData, plan: LocalTraining,
                 model_factory: Callable[[], torch.nn.Module],
                 defense_factory: Callable[[], Defense], seed: int, device: torch.device,
                 context: Context | None = None, send_audit: bool,
                 public_generator: Callable[[], ImageGenerator] | None = None) -> None:
        self.client_id = client_id
        self.data = data
        self.plan = plan
        self.defense_factory = defense_factory
        self.seed = seed
        self.device = device
        self.context = context
        self.send_audit = send_audit
        self.public_generator = public_generator
        self.model = model_factory().to(device)

    def _normalized(self, images: torch.Tensor | None = None) -> torch.Tensor:
        mean = torch.tensor(self.data.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std).view(1, -1, 1, 1)
        images = self.data.images if images is None else images
        return ((images - mean) / std).to(self.device)

    def _context(self, config: Mapping[str, object]) -> DefenseContext:
        """The round's defense context; seeds torch and the private generator per round."""
        server_round = _required_int(config, keys.SERVER_ROUND)
        num_rounds = _required_int(config, keys.NUM_ROUNDS)
        seed = int(np.random.SeedSequence(
            [self.seed, self.client_id, server_round]).generate_state(1)[0])
        torch.manual_seed(seed)
        return DefenseContext(server_round=server_round, num_rounds=num_rounds,
                              client_id=self.client_id, device=self.device,
                              generator=torch.Generator().manual_seed(seed),
                              mean=self.data.mean, std=self.data.std,
                              num_classes=self.data.num_classes,
                              public_generator=self.public_generator)

    def get_parameters(self, config: Mapping[str, object]) -> list[np.ndarray]:
        return [v.detach().cpu().numpy() for v in self.model.state_dict().values()]

    def _set_parameters(self, parameters: list[np.ndarray]) -> dict[str, torch.Tensor]:
        state = self.model.state_dict()
        if len(parameters) == 0:
            raise ProtocolError("the server sent no model weights (empty parameters): this "
                                "client needs the server to send the global model; a "
                                "fl_shadow server sends it from round 1 (README: 'Message "
                                "protocol')")
        if len(parameters) != len(state):
            raise ProtocolError(f"the server sent {len(parameters)} arrays, this client's "
                                f"model has {len(state)} (a different model.name/width?)")
        bad = [k for k, v in zip(state, parameters) if tuple(np.shape(v)) != tuple(state[k].shape)]
        if bad:
            raise ProtocolError(f"the server's array for {bad[0]} has shape "
                                f"{tuple(np.shape(parameters[list(state).index(bad[0])]))}, "
                                f"this client's model has {tuple(state[bad[0]].shape)}")
        new_state = {k: torch.as_tensor(np.asarray(v)).to(state[k].dtype)
                     for k, v in zip(state, parameters, strict=True)}
        self.model.load_state_dict(new_state)
        return {k: v.clone() for k, v in new_state.items()}

    def fit(self, parameters: list[np.ndarray],
            config: Mapping[str, object]) -> tuple[list[np.ndarray], int, dict[str, object]]:
        start = time.perf_counter()
        global_state = self._set_parameters(parameters)
        ctx = self._context(config)
        server_round, generator = ctx.server_round, ctx.generator

        defense = self.defense_factory()
        self._load_defense_state(defense)
        images, labels = self._normalized(), self.data.labels.to(self.device)
        defense.setup(images, labels, self.model, ctx)
        model = defense.wrap_model(self.model, ctx)
        result = train_locally(model, images, labels, self.plan, defense=defense, ctx=ctx,
                               generator=generator)

        local_state = defense.unwrap_state(model)
        update = {k: local_state[k].detach() - global_state[k].to(self.device)
                  for k in global_state}
        update = defense.protect_update(update, model, ctx)
        sent = [(global_state[k].to(self.device) + update[k]).to(global_state[k].dtype)
                .cpu().numpy() for k in global_state]
        self._save_defense_state(defense)

        metrics: dict[str, object] = {
            keys.PARTITION_ID: self.client_id,
            keys.TRAIN_LOSS: result.mean_loss,
            keys.NUM_STEPS: result.num_steps,
            keys.FIT_SECONDS: time.perf_counter() - start,
        }
        metrics.update({f"defense-{k}": float(v) for k, v in ctx.metrics.items()})
        if self.send_audit:
            metrics[keys.AUDIT] = encode_audit(result.batches, self.data.global_indices)
        log.info("client %d round %d: %d steps, loss %.4f, %.2fs", self.client_id, server_round,
                 result.num_steps, result.mean_loss, metrics[keys.FIT_SECONDS])
        return sent, len(self.data.labels), metrics

    def evaluate(self, parameters: list[np.ndarray],
                 config: Mapping[str, object]) -> tuple[float, int, dict[str, object]]:
        """Evaluate the global model as this client uses it (through the defense's private
        wrap, e.g. FedKL's key-lock) on the held-out images (the local ones if none)."""
        self._set_parameters(parameters)
        defense = self.defense_factory()
        self._load_defense_state(defense)
        model = defense.wrap_model(self.model, self._context(config))
        if self.data.eval_images is not None and self.data.eval_labels is not None:
            images, labels = self._normalized(self.data.eval_images), self.data.eval_labels
        else:
            images, labels = self._normalized(), self.data.labels
        preds = predict(model, images, device=self.device)
        loss = evaluate_loss(model, images, labels.to(self.device), device=self.device)
        return loss, len(labels), {
            keys.PARTITION_ID: self.client_id,
            "accuracy": accuracy(preds, labels),
            "macro_f1": macro_f1(preds, labels, self.data.num_classes)}

    # Defense state lives in the node's context.state, which Flower keeps between rounds.
    def _load_defense_state(self, defense: object) -> None:
        if self.context is None or DEFENSE_STATE_KEY not in self.context.state:
            return
        record = self.context.state[DEFENSE_STATE_KEY]
        defense.load_state_dict(record.to_torch_state_dict())  # type: ignore[attr-defined]

    def _save_defense_state(self, defense: object) -> None:
        if self.context is None:
            return
        state = defense.state_dict()  # type: ignore[attr-defined]
        if state:
            self.context.state[DEFENSE_STATE_KEY] = ArrayRecord(
                {k: v.detach().cpu() for k, v in state.items()})


def _required_int(config: Mapping[str, object], key: str) -> int:
    """An integer the fit/evaluate config must carry; one line naming it otherwise."""
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProtocolError(f"the server's config has no integer {key!r} (got {value!r}); a "
                            "fl_shadow server sends it every round (README: 'Message protocol')")
    return value
