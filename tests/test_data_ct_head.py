"""The second modality: head-CT slices from Debian's invesalius-examples (reader, preprocessing,
the shared slice recipe, and the real dataset where its package is on the machine)."""

from __future__ import annotations

import hashlib
import io
import plistlib
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fl_shadow.config import DataConfig
from fl_shadow.data import ct_head, load_dataset, volume_slices
from fl_shadow.data.cache import cache_root
from fl_shadow.errors import DataError

SPLITS = ("train", "test", "public")


# ---------------------------------------------------------------------------------------------
# Files like the package's, built here
# ---------------------------------------------------------------------------------------------
def inv3_bytes(volume: np.ndarray, spacing=(0.5, 0.5, 1.0), *, matrix_bytes: bytes | None = None,
               shape: tuple[int, ...] | None = None, plist: bool = True) -> bytes:
    """An InVesalius 3 project: gzip'd tar of main.plist and the raw int16 (z, y, x) matrix."""
    meta = {"name": "synthetic", "modality": "CT", "spacing": list(spacing),
            "matrix": {"filename": "matrix.dat", "shape": list(shape or volume.shape),
                       "dtype": "int16"}}
    raw = volume.astype("<i2").tobytes() if matrix_bytes is None else matrix_bytes
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        members = [("matrix.dat", raw)] + ([("main.plist", plistlib.dumps(meta))] if plist else [])
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def deb_bytes(member: bytes, *, path: str = ct_head.CRANIUM_MEMBER) -> bytes:
    """A Debian package (ar archive) whose data.tar.xz holds ``member`` at ``path``."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:xz") as tar:
        info = tarfile.TarInfo("./" + path)
        info.size = len(member)
        tar.addfile(info, io.BytesIO(member))
    parts = [("debian-binary", b"2.0\n"), ("control.tar.xz", b"x"), ("data.tar.xz",
                                                                      data.getvalue())]
    out = b"!<arch>\n"
    for name, body in parts:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}`\n".encode()
        out += header + body + (b"\n" if len(body) % 2 else b"")
    return out


def synthetic_head(shape=(24, 40, 40)) -> np.ndarray:
    """(z, y, x) Hounsfield units: an off-centre ellipsoid head (soft tissue 40 HU inside a
    1000 HU skull) in air, with a 1-voxel head-rest arc below it."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    r = (z / 0.9) ** 2 + ((y - 0.05) / 0.7) ** 2 + ((x + 0.1) / 0.6) ** 2
    hu = np.full(shape, -1000, dtype=np.int16)
    hu[r < 1.0] = 1000
    hu[r < 0.8] = 40
    hu[:, -3, :] = 300  # the head rest: one voxel thick, wider than the head
    return hu


@pytest.fixture
def synthetic_deb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, np.ndarray]:
    hu = synthetic_head()
    project = inv3_bytes(hu)
    monkeypatch.setattr(ct_head, "CRANIUM_SHA256", hashlib.sha256(project).hexdigest())
    path = tmp_path / "synthetic_all.deb"
    path.write_bytes(deb_bytes(project))
    return path, hu


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
def test_the_volume_is_read_from_the_package_exactly(synthetic_deb):
    path, hu = synthetic_deb
    volume, spacing, meta = ct_head.source_volume(path)
    np.testing.assert_array_equal(volume, hu)
    assert spacing == (0.5, 0.5, 1.0) and meta["modality"] == "CT"


def test_an_inv3_project_is_read_directly(tmp_path):
    hu = synthetic_head()
    path = tmp_path / "other_patient.inv3"
    path.write_bytes(inv3_bytes(hu, spacing=(0.7, 0.7, 2.0)))
    volume, spacing, _ = ct_head.source_volume(path)
    np.testing.assert_array_equal(volume, hu)
    assert spacing == (0.7, 0.7, 2.0)


@pytest.mark.parametrize(("content", "match"), [
    (lambda hu: deb_bytes(inv3_bytes(hu))[:-200], "unreadable data.tar|truncated"),
    (lambda hu: b"PK\x03\x04 not a deb", "not a Debian package"),
    (lambda hu: deb_bytes(inv3_bytes(hu), path="usr/share/doc/other/x.inv3"), "holds no"),
    (lambda hu: deb_bytes(inv3_bytes(hu, spacing=(1, 1, 1))), "Cranium.inv3 has SHA-256"),
])
def test_a_damaged_or_foreign_package_is_one_line(tmp_path, synthetic_deb, content, match):
    hu = synthetic_deb[1]
    path = tmp_path / "bad.deb"
    path.write_bytes(content(hu))
    with pytest.raises(DataError, match=match) as info:
        ct_head.source_volume(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(("project", "match"), [
    (lambda hu: inv3_bytes(hu, plist=False), "no main.plist"),
    (lambda hu: inv3_bytes(hu, matrix_bytes=b"\x00" * 10), "not 76,800 bytes"),
    (lambda hu: inv3_bytes(hu, shape=(4096, 4096, 4096)), "at most"),
    (lambda hu: inv3_bytes(hu, spacing=(1, 0, 1)), "spacing"),
    (lambda hu: b"\x1f\x8b garbage", "not a readable InVesalius 3 project"),
])
def test_a_damaged_project_is_one_line(tmp_path, project, match):
    path = tmp_path / "bad.inv3"
    path.write_bytes(project(synthetic_head()))
    with pytest.raises(DataError, match=match):
        ct_head.source_volume(path)


def test_the_official_package_is_checked_against_its_digest(tmp_path):
    path = tmp_path / ct_head.DEB_NAME
    path.write_bytes(deb_bytes(inv3_bytes(synthetic_head())))
    with pytest.raises(DataError, match="damaged download"):
        ct_head.source_volume(path)


def test_without_the_package_loading_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(ct_head, "INSTALLED_PATH", tmp_path / "absent.inv3")
    with pytest.raises(DataError, match="make install.*apt-get download invesalius-examples"):
        ct_head.find_source(DataConfig(dataset="ct_head", cache_dir=str(tmp_path)))
    assert ct_head.image_count(DataConfig(dataset="ct_head", cache_dir=str(tmp_path))) is None


# ---------------------------------------------------------------------------------------------
# Preprocessing and the shared recipe
# ---------------------------------------------------------------------------------------------
def test_window_mask_and_resampling_by_hand():
    hu = synthetic_head()
    volume, head = ct_head.preprocess(hu, (0.5, 0.5, 1.0))
    # (z, y, x) = (24, 40, 40) at 1.0 mm in z -> (x, y, z) = (40, 40, 48) at 0.5 mm
    assert volume.shape == head.shape == (40, 40, 48)
    assert volume.dtype == np.float32 and 0.0 <= volume.min() and volume.max() <= 1.0
    centre = volume[16, 21, 24]  # inside the soft tissue: (40 - -100) / 300
    assert centre == pytest.approx(140 / 300, abs=1e-6)
    assert volume.max() == 1.0  # the skull saturates the window
    # the one-voxel head rest (y = 37 of 40) is opened away and blanked, also beside the head
    assert not head[:, 37, :].any() and volume[:, 37, :].max() == 0.0
    # z resampled linearly, centres aligned: slice 2k+1 of 48 mixes slices k and k+1 of 24 as
    # 1/4 : 3/4 ... computed on the windowed values of one column inside the head
    column = np.clip((hu[:, 21, 16].astype(np.float32) + 100) / 300, 0, 1)
    assert volume[16, 21, 11] == pytest.approx(0.75 * column[5] + 0.25 * column[6], abs=1e-6)


def test_both_hemispheres_give_disjoint_guarded_splits():
    rng = np.random.default_rng(0)
    shape = (81, 70, 60)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    head = ((x - 42) / 34.0) ** 2 + ((y - 35) / 30.0) ** 2 + ((z - 30) / 26.0) ** 2 < 1
    volume = (head * rng.uniform(0.2, 1.0, shape)).astype(np.float32)
    plan = volume_slices.plan_slices(volume, head, dataset="synthetic", hemispheres="both",
                                     test_fraction=0.2, guard_slices=3)
    sagittal = plan.sources[0] % volume_slices.SOURCE_STRIDE
    lateral = sagittal[plan.labels[0] == 1]
    assert lateral.min() < 42 < lateral.max()  # both sides of the midline (x = 42)
    for axis in range(3):
        position = plan.sources[axis] % volume_slices.SOURCE_STRIDE
        codes = plan.codes[axis]
        for a in range(3):
            for b in range(a + 1, 3):
                pa, pb = position[codes == a], position[codes == b]
                assert np.abs(pa[:, None] - pb[None, :]).min() >= 4  # 3 guard slices between
        for c in (2 * axis, 2 * axis + 1):
            assert set(codes[plan.labels[axis] == c]) >= {0, 1, 2}  # every split in every class


def test_the_synthetic_package_builds_a_dataset(synthetic_deb, tmp_path):
    path, _ = synthetic_deb
    cfg = DataConfig(dataset="ct_head", path=str(path), image_size=16, cache_dir=str(tmp_path))
    arrays = ct_head.load_arrays(cfg)
    assert {len(arrays[f"{s}_labels"]) > 0 for s in SPLITS} == {True}
    seen = [set(arrays[f"{s}_sources"].tolist()) for s in SPLITS]
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sorted(cache_root(str(tmp_path)).glob("datasets/ct_head-*.npz"))
    np.testing.assert_array_equal(ct_head.load_arrays(cfg)["train_images"],
                                  arrays["train_images"])  # from the cache, the same


# ---------------------------------------------------------------------------------------------
# The real dataset (needs the package: `make install` puts it in the cache)
# ---------------------------------------------------------------------------------------------
def _real_source() -> Path | None:
    try:
        return ct_head.find_source(DataConfig(dataset="ct_head"))
    except DataError:
        return None


needs_package = pytest.mark.skipif(_real_source() is None,
                                   reason="invesalius-examples not installed (make install)")


@needs_package
def test_the_real_head_ct_gives_the_documented_dataset(tmp_path):
    cfg = DataConfig(dataset="ct_head", image_size=32, cache_dir=str(tmp_path),
                     path=str(_real_source()))
    splits = load_dataset(cfg, seed=0)
    assert (len(splits.train), len(splits.test), len(splits.public)) == (1958, 294, 237)
    assert splits.class_names == volume_slices.CLASS_NAMES
    for part in (splits.train, splits.test, splits.public):
        assert set(part.labels.tolist()) == set(range(6))
    assert 0.1 < splits.mean[0] < 0.4  # head, not blank, not saturated
    assert ct_head.image_count(cfg) == 1958 + 294 + 237
