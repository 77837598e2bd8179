"""Soteria: the fc-weight gradient columns of the most revealing features are zeroed."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_shadow.defenses.base import DefenseContext, build_defense
from fl_shadow.defenses.soteria import (
    Soteria,
    SoteriaParams,
    fc_input,
    fc_weight_index,
    representation_scores,
)
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, train_locally


def tiny_model(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=width)


def ctx() -> DefenseContext:
    return DefenseContext(server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
                          generator=torch.Generator().manual_seed(0))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1, 2])


def step_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(nn.functional.cross_entropy(model(x), y), params))


def test_fc_input_is_the_flattened_representation_of_both_models() -> None:
    x, _ = batch()
    convnet = tiny_model().eval()
    assert torch.equal(fc_input(convnet, x), torch.flatten(convnet.forward_features(x), 1))
    torch.manual_seed(0)
    resnet = build_model("resnet18", in_channels=1, num_classes=3, image_size=8).eval()
    r = fc_input(resnet, x)
    assert r.shape == (3, 512)
    pooled = torch.flatten(resnet.net.avgpool(resnet.forward_features(x)), 1)
    assert torch.allclose(r, pooled)
    assert torch.allclose(resnet.fc(r), resnet(x), atol=1e-6)


@pytest.mark.parametrize("width", [4, 8])  # D = 64 <= P = 64 (reverse), D = 128 > P (forward)
def test_scores_match_one_backward_pass_per_feature(width: int) -> None:
    model = tiny_model(width)
    x, _ = batch()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    scores = representation_scores(model, x, eps=0.1)
    assert model.training  # mode restored
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())  # BN untouched

    model.eval()
    xi = x.clone().requires_grad_(True)
    r = fc_input(model, xi)
    expected = []
    for f in range(r.shape[1]):  # the reference's loop
        cot = torch.zeros_like(r)
        cot[:, f] = 1.0
        (dx,) = torch.autograd.grad(r, xi, cot, retain_graph=True)
        expected.append((dx.flatten(1).norm(dim=1) / (r[:, f].detach().abs() + 0.1)).sum())
    assert torch.allclose(scores, torch.stack(expected), rtol=1e-5, atol=1e-6)


def test_pruned_features_have_zero_fc_weight_gradient_columns() -> None:
    model = tiny_model()
    x, y = batch()
    grads = step_grads(model, x, y)
    defense = Soteria(SoteriaParams(pruning_rate=50.0))
    scores = representation_scores(model, x, eps=0.1)
    c = ctx()
    out = defense.protect_gradient(grads, model, x, y, c)
    i = fc_weight_index(model)
    pruned = scores < torch.quantile(scores.double(), 0.5).float()
    assert 30 <= int(pruned.sum()) <= 34  # half of 64 features (ties aside)
    assert not out[i][:, pruned].any()
    assert torch.equal(out[i][:, ~pruned], grads[i][:, ~pruned])
    assert all(torch.equal(a, b) for j, (a, b) in enumerate(zip(out, grads)) if j != i)
    # the pruned features are the ones with the smallest scores
    assert scores[pruned].max() <= scores[~pruned].min()
    assert c.metrics["pruned_fraction"] == pytest.approx(float(pruned.float().mean()))


def test_zero_rate_gives_back_the_gradient_exactly() -> None:
    model = tiny_model()
    x, y = batch()
    grads = step_grads(model, x, y)
    out = Soteria(SoteriaParams(pruning_rate=0.0)).protect_gradient(grads, model, x, y, ctx())
    assert all(torch.equal(a, b) for a, b in zip(out, grads))


def test_dead_features_with_zero_eps_score_zero_not_nan() -> None:
    model = tiny_model()
    x, _ = batch()
    scores = representation_scores(model, x, eps=0.0)
    r = fc_input(model.eval(), x)
    dead = (r == 0).all(dim=0)
    assert dead.any()  # ReLU before the head: some features are 0 for every sample
    assert torch.isfinite(scores).all() and not scores[dead].any()


def test_same_inputs_same_mask() -> None:
    model = tiny_model()
    x, y = batch()
    grads = step_grads(model, x, y)
    a = Soteria(SoteriaParams()).protect_gradient(grads, model, x, y, ctx())
    b = Soteria(SoteriaParams()).protect_gradient(grads, model, x, y, ctx())
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize(("params", "match"), [
    ({"pruning_rate": 101}, (r"^defense\.params\.pruning_rate: expected a number <= 100, "
                             r"got 101$")),
    ({"pruning_rate": -1}, r"^defense\.params\.pruning_rate: expected a number >= 0, got -1$"),
    ({"eps": -0.1}, r"^defense\.params\.eps: expected a number >= 0"),
])
def test_bad_params_name_the_key(params: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_defense("soteria", params)


class _MaskRecorder(Soteria):
    def __init__(self) -> None:
        super().__init__(SoteriaParams(pruning_rate=60.0))
        self.masks: list[torch.Tensor] = []

    def feature_mask(self, model, x, generator=None):  # type: ignore[no-untyped-def]
        mask = super().feature_mask(model, x, generator)
        self.masks.append(mask)
        return mask


def test_one_local_step_update_has_zero_columns_for_pruned_features() -> None:
    model = tiny_model()
    before = model.fc.weight.detach().clone()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    defense = _MaskRecorder()
    train_locally(model, x, y, LocalTraining(lr=0.5, batch_size=4), defense=defense, ctx=ctx(),
                  generator=torch.Generator().manual_seed(1))
    (mask,) = defense.masks
    delta = model.fc.weight.detach() - before
    assert not delta[:, mask == 0].any()
    assert delta[:, mask == 1].any()


def test_the_sketch_prunes_almost_the_same_features_much_faster() -> None:
    import time

    from fl_shadow.defenses.sparsification import percentile

    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=3, image_size=16, width=8)
    x = torch.randn(8, 1, 16, 16)
    start = time.perf_counter()
    exact = representation_scores(model, x, eps=0.1)
    exact_seconds = time.perf_counter() - start
    start = time.perf_counter()
    sketch = representation_scores(model, x, eps=0.1, probes=64,
                                   generator=torch.Generator().manual_seed(1))
    sketch_seconds = time.perf_counter() - start
    pruned_exact = exact < percentile(exact, 60)
    pruned_sketch = sketch < percentile(sketch, 60)
    overlap = float((pruned_exact & pruned_sketch).sum() / pruned_exact.sum())
    assert overlap >= 0.9
    # 64 probes instead of 256 pixels per image (the speed-up grows with the image).
    assert sketch_seconds < exact_seconds
    with pytest.raises(ValueError, match="need a generator"):
        representation_scores(model, x, eps=0.1, probes=4)
    defense = build_defense("soteria", {"jacobian": "sketch", "probes": 16})
    assert "sketch of 16 probes" in defense.summary()
