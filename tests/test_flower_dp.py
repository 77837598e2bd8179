"""Flower's own DP (``strategy.flower_dp``) against the curious server.

The federation runs in-process on Flower's legacy server loop (``flwr.server.Server``, the one
the ServerApp runs) with Flower's real DP wrappers and client mods around fake clients whose
updates are known, so what the attack sees and what the global model becomes can be computed
by hand. One test sends a real train message through the project's ClientApp.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.app import Context, Message, Metadata, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import (
    Code,
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.compat.common import recorddict_compat as compat
from flwr.server import Server
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy

from clients.flower_dp_mods import flower_dp_mod
from fl_shadow import flower_keys as keys
from fl_shadow.checkpoint import Checkpoint, config_digest, load_checkpoint
from fl_shadow.config import FlowerDpConfig, load_config, load_config_dict
from fl_shadow.errors import ConfigError
from fl_shadow.report import RunRecorder, read_jsonl
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
)
from strategies.curious import Checkpointer, CuriousServer, RoundClock, UpdateObserver
from strategies.flower_dp import wrap_with_flower_dp

CLIP = 1.0
RNG = np.random.default_rng(0)
GLOBAL = [RNG.standard_normal((40, 50)).astype(np.float32),
          RNG.standard_normal(100).astype(np.float32)]
# Client 0's update is clipped (norm 3 > CLIP), client 1's is not (norm 0.5).
UPDATES = {cid: [RNG.standard_normal(a.shape).astype(np.float32) for a in GLOBAL]
           for cid in (0, 1)}
for cid, norm in ((0, 3.0), (1, 0.5)):
    scale = norm / math.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in UPDATES[cid]))
    UPDATES[cid] = [u * np.float32(scale) for u in UPDATES[cid]]


def norm(arrays: list[np.ndarray]) -> float:
    return math.sqrt(sum(float((a.astype(np.float64) ** 2).sum()) for a in arrays))


def clipped(update: list[np.ndarray], clip: float) -> list[np.ndarray]:
    """Flower's FlatClip, by hand: scale the whole update to L2 norm <= clip."""
    return [u * min(1.0, clip / norm(update)) for u in update]


def flat(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.astype(np.float64).ravel() for a in arrays])


def ldp_std(dp: FlowerDpConfig) -> float:
    return dp.sensitivity * math.sqrt(2 * math.log(1.25 / dp.delta)) / dp.epsilon


# ---- config --------------------------------------------------------------------------------
@pytest.mark.parametrize(("override", "message"), [
    ("strategy.flower_dp.mode=ldp", "strategy.flower_dp.mode: expected one of none, "
                                    "server_side_clipping, client_side_clipping, local_dp"),
    ("strategy.flower_dp.clipping_norm=0", "strategy.flower_dp.clipping_norm: expected a "
                                           "number > 0, got 0"),
    ("strategy.flower_dp.noise_multiplier=-1", "strategy.flower_dp.noise_multiplier: expected "
                                               "a number >= 0"),
    ("strategy.flower_dp.sensitivity=-0.5", "strategy.flower_dp.sensitivity: expected a "
                                            "number >= 0"),
    ("strategy.flower_dp.epsilon=0", "strategy.flower_dp.epsilon: expected a number > 0"),
    ("strategy.flower_dp.delta=1", "strategy.flower_dp.delta: expected a number < 1"),
    ("strategy.flower_dp.delta=0", "strategy.flower_dp.delta: expected a number > 0"),
    ("strategy.flower_dp.sigma=1", "strategy.flower_dp.sigma: unknown key"),
])
def test_config_errors_name_the_dotted_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_config_default_is_off_and_travels_to_clients_as_yaml() -> None:
    assert load_config(None).strategy.flower_dp == FlowerDpConfig(mode="none")
    config = load_config(None, ["strategy.flower_dp.mode=local_dp",
                                "strategy.flower_dp.epsilon=1", "strategy.flower_dp.delta=1.0e-6"])
    assert config.strategy.flower_dp == FlowerDpConfig(mode="local_dp", epsilon=1.0, delta=1e-6)
    assert load_config_dict(yaml.safe_load(config.to_yaml())) == config


# ---- a federation on Flower's server loop with fake clients -------------------------------
class MessageClient(ClientProxy):
    """A client proxy that sends FitIns as a real train message through the project's DP mod
    around a fake local training that adds a fixed update (what a SuperNode does remotely)."""

    def __init__(self, cid: int) -> None:
        super().__init__(str(cid))
        self.client_id = cid

    def _train(self, msg: Message, ctxt: Context) -> Message:
        ins = compat.recorddict_to_fitins(msg.content, keep_input=True)
        sent = [g + u for g, u in zip(parameters_to_ndarrays(ins.parameters),
                                      UPDATES[self.client_id], strict=True)]
        res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(sent), 1,
                     {keys.PARTITION_ID: self.client_id})
        return Message(compat.fitres_to_recorddict(res, keep_input=True), reply_to=msg)

    def fit(self, ins: FitIns, timeout: float | None, group_id: int | None) -> FitRes:
        msg = Message(compat.fitins_to_recorddict(ins, keep_input=True), metadata=Metadata(
            run_id=1, message_id="m", src_node_id=0, dst_node_id=self.client_id + 1,
            reply_to_message_id="", group_id="1", created_at=time.time(), ttl=60.0,
            message_type=MessageType.TRAIN))
        ctxt = Context(run_id=1, node_id=self.client_id + 1, node_config={}, state=RecordDict(),
                       run_config={})
        reply = flower_dp_mod(msg, ctxt, self._train)
        return compat.recorddict_to_fitres(reply.content, keep_input=True)

    def evaluate(self, ins: EvaluateIns, timeout: float | None,
                 group_id: int | None) -> EvaluateRes:
        raise NotImplementedError

    def get_properties(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def get_parameters(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def reconnect(self, ins, timeout, group_id):  # type: ignore[no-untyped-def]
        raise NotImplementedError


class SpyTap:
    """Sees every update exactly where the attack hook would (the observer's tap)."""

    def __init__(self) -> None:
        self.seen: dict[int, list[np.ndarray]] = {}

    def __call__(self, server_round: int, global_arrays: list[np.ndarray],
                 update: object) -> None:
        self.seen[update.client_id] = [np.array(a, copy=True)  # type: ignore[attr-defined]
                                       for a in update.arrays]  # type: ignore[attr-defined]


class Killed(Exception):
    """Stands in for the server process dying in the middle of a round."""


def federate(tmp_path: Path, dp: FlowerDpConfig, *, num_rounds: int = 1,
             resume: Checkpoint | None = None, die_in_round: int | None = None
             ) -> tuple[SpyTap, CuriousServer, list[np.ndarray], list[list[np.ndarray]]]:
    """Run (or resume) the federation; returns the spy, the strategy, the final global model
    and every model the central evaluation saw."""
    raw = load_config(None).to_dict()
    raw["strategy"]["flower_dp"] = dataclasses.asdict(dp)
    raw["train"]["rounds"] = num_rounds
    config = load_config_dict(raw)
    spy, evaluated = SpyTap(), []

    def evaluate_fn(server_round, arrays, _config):  # type: ignore[no-untyped-def]
        if server_round == die_in_round:
            raise Killed(f"killed in round {server_round}")
        evaluated.append([np.array(a, copy=True) for a in arrays])
        return 0.0, {"accuracy": 0.0}

    recorder = RunRecorder(tmp_path, config.to_yaml(), num_rounds,
                           resume_after=resume.server_round if resume else None)
    inner = FedAvg(fraction_evaluate=0.0, min_fit_clients=2, min_available_clients=2,
                   evaluate_fn=evaluate_fn,
                   initial_parameters=ndarrays_to_parameters(resume.arrays if resume else GLOBAL))
    strategy = CuriousServer(
        wrap_with_flower_dp(inner, config.strategy.flower_dp, sampled_clients=2, seed=0),
        clock=RoundClock(num_rounds, resume.server_round if resume else 0),
        round_config=lambda r: {keys.SERVER_ROUND: r, keys.NUM_ROUNDS: num_rounds,
                                keys.EXPERIMENT: config.to_yaml()},
        observer=UpdateObserver(recorder, [f"a{i}" for i in range(len(GLOBAL))], tap=spy),
        recorder=recorder, checkpointer=Checkpointer(config_sha256=config_digest(
            config.to_yaml())), min_fit_clients=2, resume_rng=resume.rng if resume else None)
    server = Server(client_manager=SimpleClientManager(), strategy=strategy)
    server.set_max_workers(1)
    for cid in (0, 1):
        server.client_manager().register(MessageClient(cid))
    server.fit(strategy.remaining_rounds, timeout=None)
    return spy, strategy, parameters_to_ndarrays(server.parameters), evaluated


def sent(update: list[np.ndarray]) -> list[np.ndarray]:
    return [g + u for g, u in zip(GLOBAL, update, strict=True)]


def test_server_side_clipping_the_attack_sees_raw_updates_the_model_is_noised(
        tmp_path: Path) -> None:
    dp = FlowerDpConfig(mode="server_side_clipping", noise_multiplier=1.0, clipping_norm=CLIP)
    spy, strategy, final, evaluated = federate(tmp_path, dp)
    assert isinstance(strategy.strategy, DifferentialPrivacyServerSideFixedClipping)
    for cid in (0, 1):  # exactly what the client sent, unclipped
        assert all(np.array_equal(a, b) for a, b in zip(spy.seen[cid], sent(UPDATES[cid]),
                                                        strict=True))
    assert norm([s - g for s, g in zip(spy.seen[0], GLOBAL, strict=True)]) == pytest.approx(3.0)
    clean = flat(GLOBAL) + (flat(clipped(UPDATES[0], CLIP)) + flat(UPDATES[1])) / 2
    residual = flat(final) - clean
    # Flower's central noise: std = noise_multiplier * clipping_norm / sampled clients.
    assert residual.std() == pytest.approx(1.0 * CLIP / 2, rel=0.1)
    assert abs(residual.mean()) < 0.05
    # The central evaluation, the utility row and the checkpoint are the noised model.
    assert all(np.array_equal(a, b) for a, b in zip(evaluated[-1], final, strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(load_checkpoint(tmp_path).arrays, final,
                                                    strict=True))
    assert [r["round"] for r in read_jsonl(tmp_path / "utility.jsonl")] == [0, 1]


def test_client_side_clipping_the_attack_sees_clipped_updates(tmp_path: Path) -> None:
    dp = FlowerDpConfig(mode="client_side_clipping", noise_multiplier=1.0, clipping_norm=CLIP)
    spy, strategy, final, evaluated = federate(tmp_path, dp)
    assert isinstance(strategy.strategy, DifferentialPrivacyClientSideFixedClipping)
    seen = {cid: [s - g for s, g in zip(spy.seen[cid], GLOBAL, strict=True)] for cid in (0, 1)}
    assert norm(seen[0]) == pytest.approx(CLIP, rel=1e-5)
    # Clipping only rescales: the direction, all a cosine-matching attack uses, is intact.
    cosine = flat(seen[0]) @ flat(UPDATES[0]) / (norm(seen[0]) * norm(UPDATES[0]))
    assert cosine == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(flat(seen[1]), flat(UPDATES[1]), atol=1e-6)  # under the bound
    clean = (flat(spy.seen[0]) + flat(spy.seen[1])) / 2
    assert (flat(final) - clean).std() == pytest.approx(1.0 * CLIP / 2, rel=0.1)
    assert all(np.array_equal(a, b) for a, b in zip(evaluated[-1], final, strict=True))


def test_local_dp_the_attack_sees_noised_updates(tmp_path: Path) -> None:
    dp = FlowerDpConfig(mode="local_dp", clipping_norm=CLIP, sensitivity=CLIP, epsilon=10.0,
                        delta=1e-5)
    spy, strategy, final, _ = federate(tmp_path, dp)
    assert isinstance(strategy.strategy, FedAvg)  # a client mod only: no server wrapper
    for cid in (0, 1):
        noise = flat(spy.seen[cid]) - flat(sent(clipped(UPDATES[cid], CLIP)))
        assert noise.std() == pytest.approx(ldp_std(dp), rel=0.1)  # ~0.485, the update ~0.02
        assert abs(noise.mean()) < 0.05
    # No central noise: the global model is the plain mean of the noised updates.
    np.testing.assert_allclose(flat(final), (flat(spy.seen[0]) + flat(spy.seen[1])) / 2,
                               atol=1e-5)


def test_no_flower_dp_leaves_updates_and_mean_untouched(tmp_path: Path) -> None:
    spy, strategy, final, _ = federate(tmp_path, FlowerDpConfig())
    assert isinstance(strategy.strategy, FedAvg)
    for cid in (0, 1):
        assert all(np.array_equal(a, b) for a, b in zip(spy.seen[cid], sent(UPDATES[cid]),
                                                        strict=True))
    np.testing.assert_allclose(flat(final), flat(GLOBAL) + (flat(UPDATES[0]) +
                                                            flat(UPDATES[1])) / 2, atol=1e-6)


def test_central_noise_repeats_under_the_seed(tmp_path: Path) -> None:
    dp = FlowerDpConfig(mode="server_side_clipping", noise_multiplier=1.0, clipping_norm=CLIP)
    _, _, a, _ = federate(tmp_path / "a", dp)
    _, _, b, _ = federate(tmp_path / "b", dp)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_central_noise_resumes_exactly_after_a_crash(tmp_path: Path) -> None:
    """The server's NumPy state (Flower's noise source) travels in the checkpoint."""
    dp = FlowerDpConfig(mode="server_side_clipping", noise_multiplier=1.0, clipping_norm=CLIP)
    _, _, whole, _ = federate(tmp_path / "whole", dp, num_rounds=3)
    with pytest.raises(Killed):
        federate(tmp_path / "broken", dp, num_rounds=3, die_in_round=2)
    checkpoint = load_checkpoint(tmp_path / "broken")
    assert checkpoint.server_round == 1
    _, strategy, resumed, _ = federate(tmp_path / "broken", dp, num_rounds=3,
                                       resume=checkpoint)
    assert strategy.remaining_rounds == 2
    assert all(np.array_equal(x, y) for x, y in zip(whole, resumed, strict=True))


def test_wrapper_forwards_rounds_and_fit_config(tmp_path: Path) -> None:
    config = load_config(None, ["train.rounds=4"])
    recorder = RunRecorder(tmp_path, config.to_yaml(), 4)
    dp = FlowerDpConfig(mode="client_side_clipping", clipping_norm=2.5)
    inner = wrap_with_flower_dp(FedAvg(min_fit_clients=2, min_available_clients=2), dp,
                                sampled_clients=2, seed=0)
    strategy = CuriousServer(  # as when resuming after round 1
        inner, clock=RoundClock(4, start_round=1),
        round_config=lambda r: {keys.SERVER_ROUND: r, keys.EXPERIMENT: config.to_yaml()},
        observer=UpdateObserver(recorder, []), recorder=recorder)
    assert strategy.remaining_rounds == 3 and strategy.strategy is inner
    manager = SimpleClientManager()
    for cid in (0, 1):
        manager.register(MessageClient(cid))
    instructions = strategy.configure_fit(1, ndarrays_to_parameters(GLOBAL), manager)
    assert len(instructions) == 2
    for _, ins in instructions:  # Flower's clipping norm next to the project's round config
        assert ins.config["clipping_norm"] == 2.5
        assert ins.config[keys.SERVER_ROUND] == 2 and keys.EXPERIMENT in ins.config


def test_flower_clipping_counts_but_never_scales_batchnorm_counters() -> None:
    """Pins Flower's FlatClip on a BatchNorm state_dict: the 0-dim int64
    ``num_batches_tracked`` enters the norm but comes out unscaled."""
    from flwr.supercore.differential_privacy import compute_clip_model_update

    weights, counter = np.full(4, 3.0, np.float32), np.array(4, dtype=np.int64)  # norm 6, 4
    params = [weights.copy(), counter.copy()]
    compute_clip_model_update(params, [np.zeros(4, np.float32), np.array(0, np.int64)], 1.0)
    np.testing.assert_allclose(params[0], weights / math.hypot(6.0, 4.0), rtol=1e-6)
    assert int(params[1]) == 4


# ---- the project's ClientApp applies the mod --------------------------------------------
def test_client_app_clips_a_real_update(tmp_path: Path) -> None:
    import fl_shadow.apps.client_app as client_app
    from fl_shadow.apps.federation import Federation

    config = load_config(None, [
        "data.image_size=16", "partition.num_clients=2", "partition.sizes=[2, 6]",
        "partition.batch_sizes=[1, 3]", "model.width=4", "train.rounds=1", "train.device=cpu",
        "strategy.min_fit_clients=2", "strategy.min_available_clients=2",
        "strategy.flower_dp.mode=client_side_clipping",
        "strategy.flower_dp.clipping_norm=0.05"])
    model = Federation(config).architecture()
    names = list(model.state_dict())
    initial = [v.detach().numpy().copy() for v in model.state_dict().values()]
    ins = FitIns(ndarrays_to_parameters(initial), {
        keys.SERVER_ROUND: 1, keys.NUM_ROUNDS: 1, keys.EXPERIMENT: config.to_yaml(),
        "clipping_norm": 0.05})
    msg = Message(compat.fitins_to_recorddict(ins, keep_input=True), metadata=Metadata(
        run_id=1, message_id="m", src_node_id=0, dst_node_id=1, reply_to_message_id="",
        group_id="1", created_at=time.time(), ttl=60.0, message_type=MessageType.TRAIN))
    node = {keys.NODE_PARTITION_ID: 1, keys.NODE_NUM_PARTITIONS: 2}
    reply = client_app.app(msg, Context(run_id=1, node_id=1, node_config=node,
                                        state=RecordDict(), run_config={}))
    assert not reply.has_error(), reply.error
    res = compat.recorddict_to_fitres(reply.content, keep_input=True)
    update = [s.astype(np.float64) - g for s, g in
              zip(parameters_to_ndarrays(res.parameters), initial, strict=True)]
    floats = [u for u, k in zip(update, names, strict=True) if "num_batches" not in k]
    counters = [u for u, k in zip(update, names, strict=True) if "num_batches" in k]
    assert 0 < norm(floats) < 0.05  # the counters took their share of the bound
    assert all(int(c) == 2 for c in counters)  # 6 images, batch 3: two steps, unscaled
    assert res.metrics[keys.PARTITION_ID] == 1 and keys.AUDIT in res.metrics
