"""Every registered Flower strategy under the curious server, end to end in-process.

The federation runs through Flower's own server loop and the project's ClientApp
(:func:`fl_shadow.apps.inprocess.run_in_process`); the strategy is chosen by ``strategy.name``
and wrapped by :class:`strategies.curious.CuriousServer` (and by Flower's DP wrapper when
``strategy.flower_dp`` asks for one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from attacks.replay import UpdateReplay
from fl_shadow import flower_keys as keys
from fl_shadow.apps.experiment import load_experiment
from fl_shadow.apps.federation import Federation
from fl_shadow.apps.inprocess import run_in_process
from fl_shadow.audit import attacked_indices, decode_audit
from fl_shadow.errors import ConfigError
from fl_shadow.report import read_jsonl

TINY = ["data.image_size=8", "model.width=4", "train.rounds=2", "train.device=cpu",
        "partition.scheme=sizes", "partition.num_clients=3", "partition.sizes=[1, 4, 8]",
        "partition.batch_sizes=[1, 4, 4]", "strategy.min_fit_clients=3",
        "strategy.min_available_clients=3", "attack.clients=[0, 1]", "attack.rounds=[1, 2]",
        "attack.params.iterations=5", "attack.params.progress=false"]

PARAMS = {"fedprox": ["strategy.params.proximal_mu=0.1"],
          "fedadam": ["strategy.params.eta=0.01"], "fedyogi": [], "fedadagrad": [],
          "fedavgm": ["strategy.params.server_momentum=0.5"], "fedmedian": [],
          "krum": ["strategy.params.num_malicious_clients=0",
                   "strategy.params.num_clients_to_keep=2"], "fedavg": []}


def run(tmp_path: Path, *overrides: str, tap=None) -> Path:  # type: ignore[no-untyped-def]
    config, components = load_experiment(None, [*TINY, *overrides])
    run_dir = tmp_path / "run"
    run_in_process(Federation(config, components), run_dir, tap=tap)
    return run_dir


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_every_strategy_runs_under_the_curious_server(tmp_path: Path, name: str) -> None:
    attacked = name in ("fedprox", "fedadam")
    attack = [] if attacked else ["attack.name=none"]
    run_dir = run(tmp_path, f"strategy.name={name}", *PARAMS[name], *attack)
    utility = read_jsonl(run_dir / "utility.jsonl")
    assert [r["round"] for r in utility] == [0, 1, 2]
    assert all(np.isfinite(r["loss"]) for r in utility)
    privacy = read_jsonl(run_dir / "privacy.jsonl")
    if attacked:  # the attack ran on the updates, before this strategy aggregated them
        assert [(r["round"], r["client"]) for r in privacy] == [(1, 0), (1, 1), (2, 0), (2, 1)]
        assert all(0 < r["psnr"] < 100 for r in privacy)
    else:
        assert privacy == []


def test_server_optimizers_move_the_model_differently(tmp_path: Path) -> None:
    finals = {}
    for name in ("fedavg", "fedadam", "fedmedian"):
        run_dir = run(tmp_path / name, f"strategy.name={name}", *PARAMS[name],
                      "attack.name=none")
        finals[name] = read_jsonl(run_dir / "utility.jsonl")[-1]["loss"]
    assert len(set(finals.values())) == 3, finals


def test_flower_dp_composes_inside_the_curious_server_with_any_strategy(tmp_path: Path
                                                                        ) -> None:
    seen: dict[int, float] = {}

    def tap(server_round, global_arrays, update):  # type: ignore[no-untyped-def]
        norm = np.sqrt(sum(float(np.sum((np.asarray(a, np.float64) - g) ** 2))
                           for a, g in zip(update.arrays, global_arrays)))
        seen[update.client_id] = norm

    run_dir = run(tmp_path, "strategy.name=fedadam", *PARAMS["fedadam"], "attack.name=none",
                  "strategy.flower_dp.mode=server_side_clipping",
                  "strategy.flower_dp.clipping_norm=0.01", tap=tap)
    # The curious server sees the raw updates (unclipped: larger than the clipping norm) ...
    assert min(seen.values()) > 0.01
    # ... and the run completes with Flower's clipping and noise applied to the aggregate.
    assert [r["round"] for r in read_jsonl(run_dir / "utility.jsonl")] == [0, 1, 2]


def test_the_attacker_replays_fedprox_exactly(tmp_path: Path) -> None:
    """At the true images the replay of the plan the server sent (FedProx's proximal term
    included) reproduces the client's update; the plain-SGD replay does not."""
    config, components = load_experiment(None, [*TINY, "strategy.name=fedprox",
                                                "strategy.params.proximal_mu=5.0"])
    federation = Federation(config, components)
    updates = {}

    def tap(server_round, global_arrays, update):  # type: ignore[no-untyped-def]
        if server_round == 1:
            updates[update.client_id] = (global_arrays, update)

    run_in_process(federation, tmp_path / "run", tap=tap)
    global_arrays, update = updates[2]  # 8 images, batch 4: two steps (the first has no pull)
    state = dict(zip(federation.state_keys, (torch.as_tensor(a) for a in global_arrays)))
    received = [torch.as_tensor(a) - state[k] for k, a in zip(federation.state_keys,
                                                              update.arrays)]
    model = federation.architecture()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    target = [received[federation.state_keys.index(n)].float() for n in names]
    splits = federation.splits
    indices = attacked_indices(decode_audit(str(update.metrics[keys.AUDIT])))
    x = splits.normalize(splits.train.images[indices])
    y = splits.train.labels[indices]
    plan = federation.plan_for(2)
    assert plan.proximal_mu == 5.0
    for mu, exact in ((plan.proximal_mu, True), (0.0, False)):
        from dataclasses import replace

        replay = UpdateReplay(model, state, replace(plan, proximal_mu=mu), update.num_examples)
        simulated = replay(x, y, create_graph=False)
        close = all(torch.allclose(s, t, atol=1e-5) for s, t in zip(simulated, target))
        assert close == exact, mu


@pytest.mark.parametrize(("override", "message"), [
    ("strategy.name=fedsgd", r"^strategy\.name: unknown strategy 'fedsgd'; expected one of: "
                             r"fedadagrad, fedadam, fedavg, fedavgm, fedmedian, fedprox, "
                             r"fedyogi, krum$"),
    ("strategy.params.eta=0.1", r"^strategy\.params\.eta: unknown key; this takes no keys$"),
    ("strategy.name=fedadam strategy.params.beta_1=1", r"^strategy\.params\.beta_1: expected a "
                                                       r"number < 1, got 1$"),
    ("strategy.name=krum strategy.params.num_clients_to_keep=4",
     r"^strategy\.params\.num_clients_to_keep: expected at most strategy\.min_fit_clients "
     r"\(3\), got 4$"),
])
def test_strategy_settings_are_checked_at_load(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_experiment(None, [*TINY, *override.split()], data=False)
