"""``fl-shadow validate`` refuses every bad config of the corpus, at load, in one line."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bad_configs import CASES, make_files, resolve
from fl_shadow.apps.experiment import load_experiment
from fl_shadow.errors import ConfigError


@pytest.mark.parametrize(("label", "overrides", "expected"), CASES, ids=[c[0] for c in CASES])
def test_every_bad_config_is_refused_at_load(tmp_path: Path, label: str, overrides: list[str],
                                             expected: str) -> None:
    make_files(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match=expected) as info:
            load_experiment(None, resolve(overrides, tmp_path))
    assert "\n" not in str(info.value)


def test_the_command_line_refuses_them_with_exit_2(tmp_path: Path) -> None:
    make_files(tmp_path)
    cases = [c for c in CASES if c[0] in ("unknown defense", "sizes larger than the data",
                                          "inf shadow w0", "image limit above the attack's")]
    for label, overrides, expected in cases:
        args = [arg for o in resolve(overrides, tmp_path) for arg in ("--set", o)]
        proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate", *args],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 2, (label, proc.stdout, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, (label, proc.stderr)
        assert lines[0].startswith("fl-shadow: ")


def test_the_shipped_default_validates(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "fl_shadow.apps.cli", "validate"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("default: ok (strategy FedAvg")


# ---- the machine's memory, before anything is allocated -----------------------------------------
TINY = ["data.image_size=16", "partition.num_clients=2", "partition.sizes=[2, 6]",
        "partition.batch_sizes=[1]", "strategy.min_fit_clients=2",
        "strategy.min_available_clients=2", "attack.name=none", "model.width=4"]


def test_a_dataset_larger_than_the_free_memory_is_refused_before_it_loads(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """2,518 offline images of 1 x 16 x 16: 2,518 * 256 * 4 B of floats and 2,518 * 256 B of
    uint8 arrays = 3,223,040 B = 3.07 MiB, against 3 MiB free."""
    import fl_shadow.apps.experiment as experiment

    class Loading(Exception):
        """The dataset started to load."""

    def load_dataset(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Loading

    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: 3 * 2**20)
    monkeypatch.setattr(experiment, "load_dataset", load_dataset)
    with pytest.raises(ConfigError) as info:  # refused before anything loads
        load_experiment(None, TINY)
    assert str(info.value) == (
        "data: the dataset needs about 3.1 MiB in memory (2,518 images of 1 x 16 x 16 float32), "
        "more than the 3.0 MiB this machine has available (MemAvailable); lower "
        "data.image_size or data.channels, or use fewer images")
    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: 3_223_040)  # just enough
    with pytest.raises(Loading):
        load_experiment(None, TINY)
    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: None)  # unknown: no check
    with pytest.raises(Loading):
        load_experiment(None, TINY)


def test_a_model_larger_than_the_free_memory_is_refused_before_it_is_built(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The width-4 ConvNet at 16 px (3,133 weights, see test_models_training) needs
    3,133 * 4 B * 4 copies = 50,128 B; with 3.2 MB free the data fits and the model does not
    (the check counts it on the meta device)."""
    import fl_shadow.apps.experiment as experiment

    free = iter([2**23, 40_000])  # before loading the data, then after
    monkeypatch.setattr(experiment, "available_memory_bytes", lambda: next(free))
    with pytest.raises(ConfigError) as info:
        load_experiment(None, TINY)
    assert str(info.value) == (
        "model: convnet at 16 px (model.width 4) has 3,133 weights, about 49.0 KiB for "
        "training (4 float32 copies), more than the 39.1 KiB this machine has available "
        "(MemAvailable); lower model.width or data.image_size")


def test_available_memory_is_read_from_the_kernel() -> None:
    from fl_shadow.apps.experiment import available_memory_bytes

    free = available_memory_bytes()
    assert free is None or 0 < free < 2**50


# ---- weak data: a warning at load, not an error ---------------------------------------------------
def keep_test_images(monkeypatch: pytest.MonkeyPatch, counts: list[int]) -> None:
    """Load the real data, then keep only the first ``counts[k]`` test images of class ``k``
    (the offline data at 16 px has 45, 45, 63, 63, 40 and 48)."""
    import dataclasses

    import fl_shadow.apps.experiment as experiment

    real = experiment.load_dataset

    def load_dataset(config, *, seed):  # type: ignore[no-untyped-def]
        splits = real(config, seed=seed)
        labels = splits.test.labels
        keep = [i for k, n in enumerate(counts)
                for i in (labels == k).nonzero().flatten()[:n].tolist()]
        return dataclasses.replace(splits, test=splits.test.subset(keep))

    monkeypatch.setattr(experiment, "load_dataset", load_dataset)


def test_a_test_split_short_of_images_per_class_names_those_classes(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 + 5 + 5 + 4 + 2 + 0 = 21 test images: enough overall (2 x 6 classes), not per class.
    keep_test_images(monkeypatch, [5, 5, 5, 4, 2, 0])
    with pytest.warns(UserWarning, match=r"fewer than 5 images") as caught:
        load_experiment(None, TINY)
    assert [str(w.message) for w in caught] == [
        ("data: the test split holds fewer than 5 images of 3 of 6 classes (coronal anterior: "
         "4, axial inferior: 2, axial superior: 0); their share of macro-F1 rests on a handful "
         "of predictions (raise data.test_fraction)")]


def test_a_tiny_test_split_warns_overall_and_per_class(monkeypatch: pytest.MonkeyPatch) -> None:
    keep_test_images(monkeypatch, [1, 1, 1, 1, 1, 1])  # 6 < 2 x 6 classes
    with pytest.warns(UserWarning) as caught:
        load_experiment(None, TINY)
    messages = [str(w.message) for w in caught]
    assert messages[0] == ("data: the test split holds 6 images for 6 classes; accuracy and "
                           "macro-F1 will be coarse")
    assert messages[1].startswith("data: the test split holds fewer than 5 images of 6 of 6 "
                                  "classes (sagittal medial: 1, sagittal lateral: 1,")


def test_five_test_images_per_class_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    from fl_shadow.apps.experiment import MIN_TEST_IMAGES_PER_CLASS

    keep_test_images(monkeypatch, [MIN_TEST_IMAGES_PER_CLASS] * 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_experiment(None, TINY)
    assert not [w for w in caught if "test split" in str(w.message)]
