"""Task models: a small ConvNet for fast CPU runs and ResNet-18 with BatchNorm.

Both take normalized images ``(N, C, H, W)`` with C in {1, 3} and return class logits
``(N, num_classes)``. Both end in a single ``nn.Linear`` called ``fc`` whose input is the
flattened feature vector, because label recovery (iDLG), Soteria and Grad-CAM++ all need to find
"the last layer" and "the last conv block" without guessing. Both also split as
``forward_head(forward_features(x)) == forward(x)`` at the last conv block, so saliency and
representation-based defenses can run the head alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from fl_shadow.errors import ConfigError
from fl_shadow.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """A registered task model.

    Attributes:
        name: the ``model.name`` that selects it.
        build: ``build(in_channels=, num_classes=, image_size=, width=, norm=) -> nn.Module``
            with fresh weights (seed torch first).
        norms: the ``model.norm`` values it supports (checked at load).
        uses_width: whether ``model.width`` changes it.
    """

    name: str
    build: Callable[..., nn.Module]
    norms: tuple[str, ...] = ("batch", "none")
    uses_width: bool = True

    def parameter_count(self, *, in_channels: int, num_classes: int, image_size: int,
                        width: int = 32, norm: str = "batch") -> int:
        """Numbers in the model's ``state_dict``, counted on PyTorch's meta device (nothing
        is allocated, so a model too large for the machine can be refused before it is)."""
        with torch.device("meta"):
            model = self.build(in_channels=in_channels, num_classes=num_classes,
                               image_size=image_size, width=width, norm=norm)
        return sum(t.numel() for t in model.state_dict().values())

    def check(self, *, norm: str) -> None:
        """Refuse settings this model does not have (at load)."""
        if norm not in self.norms:
            raise ConfigError(f"model.norm: expected one of {', '.join(self.norms)} for "
                              f"{self.name}, got {norm!r}")


MODELS: Registry[ModelSpec] = Registry("model", config_key="model.name")


class ConvNet(nn.Module):
    """Three conv blocks + a linear head on the flattened feature map (fast on a CPU at 32-64 px).

    The head sees the whole ``4*width x S/4 x S/4`` feature map (no global pooling), as in the
    ConvNet of Geiping et al. (2020): the classifier keeps spatial detail, and so does its
    gradient, which is what makes small federated models leak.

    Args:
        in_channels: 1 or 3.
        num_classes: output classes.
        width: channels of the first block (doubled in the second and third).
        norm: ``batch`` for BatchNorm after every conv (GradInversion's BN prior needs it), or
            ``none``.
    """

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 32,
                 norm: str = "batch", image_size: int = 32) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=norm != "batch")]
            if norm == "batch":
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU())
            if pool:
                layers.append(nn.MaxPool2d(2))
            return layers

        w = width
        self.features = nn.Sequential(
            *block(in_channels, w, pool=True),
            *block(w, 2 * w, pool=True),
            *block(2 * w, 4 * w, pool=False),
        )
        side = image_size // 4
        self.fc = nn.Linear(4 * w * side * side, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv block's output (what :meth:`cam_layer` produces)."""
        return self.features(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`forward_features`' output."""
        return self.fc(torch.flatten(features, 1))

    def cam_layer(self) -> nn.Module:
        """The last conv block, for Grad-CAM++."""
        return self.features


class ResNet18(nn.Module):
    """torchvision's ResNet-18 (BatchNorm), randomly initialised, for 1- or 3-channel input.

    Inputs smaller than 64 px get the CIFAR-style stem (3x3 conv, stride 1, no max-pool) so the
    feature maps do not collapse to 1x1 before the last block.
    """

    def __init__(self, in_channels: int, num_classes: int, *, image_size: int = 224) -> None:
        super().__init__()
        # Imported here: torchvision loads torch._dynamo (~1.2 s), which every process that
        # imports the models (each Flower actor) would pay, mostly for the small ConvNet.
        from torchvision.models import resnet18

        net = resnet18(weights=None, num_classes=num_classes)
        if image_size < 64:
            net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.net = net

    @property
    def fc(self) -> nn.Linear:
        return self.net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last residual block's output (what :meth:`cam_layer` produces)."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from :meth:`forward_features`' output."""
        return self.net.fc(torch.flatten(self.net.avgpool(features), 1))

    def cam_layer(self) -> nn.Module:
        """The last residual block, for Grad-CAM++."""
        return self.net.layer4


def _convnet(*, in_channels: int, num_classes: int, image_size: int, width: int = 32,
             norm: str = "batch") -> nn.Module:
    return ConvNet(in_channels, num_classes, width=width, norm=norm, image_size=image_size)


def _resnet18(*, in_channels: int, num_classes: int, image_size: int, width: int = 32,
              norm: str = "batch") -> nn.Module:
    MODELS.get("resnet18").check(norm=norm)
    return ResNet18(in_channels, num_classes, image_size=image_size)


MODELS.add(ModelSpec("convnet", _convnet))
MODELS.add(ModelSpec("resnet18", _resnet18, norms=("batch",), uses_width=False))


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int,
                width: int = 32, norm: str = "batch") -> nn.Module:
    """Build a registered model with freshly initialised weights (seed torch first)."""
    return MODELS.get(name).build(in_channels=in_channels, num_classes=num_classes,
                                  image_size=image_size, width=width, norm=norm)


@dataclass(frozen=True)
class ModelArchitecture:
    """The task model's architecture as data: calling it builds a freshly initialised model.

    This is what the attacker's prior holds (:attr:`fl_shadow.threat_model.Prior.
    model_factory`): the public architecture and nothing else, so it can be pickled to an
    attack worker and can never close over a client's data.
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    width: int = 32
    norm: str = "batch"

    def __call__(self) -> nn.Module:
        return build_model(self.name, in_channels=self.in_channels,
                           num_classes=self.num_classes, image_size=self.image_size,
                           width=self.width, norm=self.norm)
