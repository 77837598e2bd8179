"""Models (shapes, channels, small inputs) and the shared local-training loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fl_shadow.defenses.base import Defense, DefenseContext
from fl_shadow.errors import ConfigError
from fl_shadow.models import build_model
from fl_shadow.training import LocalTraining, batch_indices, train_locally


@pytest.mark.parametrize(("name", "channels", "size"), [("convnet", 1, 32), ("convnet", 3, 64),
                                                       ("resnet18", 1, 32), ("resnet18", 3, 64)])
def test_models_map_images_to_logits(name: str, channels: int, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=channels, num_classes=5, image_size=size, width=8)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 5)
    assert isinstance(model.fc, nn.Linear)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(ConfigError, match=r"^model\.name: unknown model 'vgg'; expected one of: "
                                          r"convnet, resnet18$"):
        build_model("vgg", in_channels=1, num_classes=2, image_size=32)


def test_step_batch_sizes_follow_the_plan() -> None:
    assert LocalTraining(lr=0.1, batch_size=4).step_batch_sizes(10) == [4, 4, 2]
    assert LocalTraining(lr=0.1, batch_size=4, local_epochs=2).step_batch_sizes(5) == [4, 1, 4, 1]
    assert LocalTraining(lr=0.1, batch_size=8).step_batch_sizes(1) == [1]
    assert LocalTraining(lr=0.1, batch_size=2, local_steps=3).step_batch_sizes(4) == [2, 2, 2]
    assert LocalTraining(lr=0.1, batch_size=2, local_steps=3).num_distinct_images(4) == 4
    assert LocalTraining(lr=0.1, batch_size=4).num_distinct_images(1) == 1


def test_batches_cover_each_epoch_once() -> None:
    g = torch.Generator().manual_seed(0)
    batches = batch_indices(10, LocalTraining(lr=0.1, batch_size=4, local_epochs=2), g)
    first, second = torch.cat(batches[:3]), torch.cat(batches[3:])
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()  # reshuffled every epoch


class _Recorder(Defense):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def perturb_batch(self, x, y, model, ctx):  # type: ignore[no-untyped-def]
        self.batches.append(len(x))
        return x + 1.0

    def protect_gradient(self, grads, model, x, y, ctx):  # type: ignore[no-untyped-def]
        return [torch.zeros_like(g) for g in grads]


def test_train_locally_runs_the_defense_hooks_on_every_step() -> None:
    torch.manual_seed(0)
    model = build_model("convnet", in_channels=1, num_classes=3, image_size=8, width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    defense = _Recorder()
    ctx = DefenseContext(server_round=1, num_rounds=1, client_id=0, device=torch.device("cpu"),
                         generator=torch.Generator().manual_seed(0))
    result = train_locally(model, x, y, LocalTraining(lr=0.5, batch_size=4), defense=defense,
                           ctx=ctx, generator=torch.Generator().manual_seed(1))
    assert defense.batches == [4, 2] and result.num_steps == 2
    assert sorted(i for b in result.batches for i in b) == list(range(6))
    after = model.state_dict()
    # zeroed gradients: no parameter moved; BatchNorm statistics still did (forward passes)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    assert not torch.equal(after["features.1.running_mean"], before["features.1.running_mean"])


@pytest.mark.parametrize("name,size", [("convnet", 32), ("resnet18", 32), ("resnet18", 64)])
def test_feature_head_split_reproduces_forward(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = build_model(name, in_channels=1, num_classes=6, image_size=size).eval()
    x = torch.randn(2, 1, size, size)
    features = model.forward_features(x)
    torch.testing.assert_close(model.forward_head(features), model(x))
    captured = []
    handle = model.cam_layer().register_forward_hook(lambda m, i, o: captured.append(o))
    model(x)
    handle.remove()
    torch.testing.assert_close(captured[0], features)


def test_parameter_count_is_known_before_anything_is_allocated() -> None:
    """ConvNet, 1 channel, 6 classes, 16 px, width 4, BatchNorm: conv 4*1*9 + BN 4*4+1, conv
    8*4*9 + BN 8*4+1, conv 16*8*9 + BN 16*4+1, fc 16*4*4*6 + 6 (the meta device counts it)."""
    from fl_shadow.models import MODELS

    expected = 36 + 17 + 288 + 33 + 1152 + 65 + 1542
    spec = MODELS.get("convnet")
    assert spec.parameter_count(in_channels=1, num_classes=6, image_size=16, width=4) == expected
    model = build_model("convnet", in_channels=1, num_classes=6, image_size=16, width=4)
    assert sum(t.numel() for t in model.state_dict().values()) == expected
    # Width 1024 at 1024 px: 1.7 billion weights, counted without allocating 6.8 GB.
    assert spec.parameter_count(in_channels=1, num_classes=6, image_size=1024,
                                width=1024) > 1.7e9
