"""The warnings a run's results carry: sparse test classes, diverged training, wrong labels,
and the load-time warnings a block records (:mod:`fl_shadow.diagnostics`)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from fl_shadow.diagnostics import (
    DIVERGENCE_FACTOR,
    WHERE_ATTACK,
    WHERE_LOAD,
    WHERE_TRAINING,
    RunWarning,
    attack_warnings,
    capture_warnings,
    deduplicated,
    label_recovery_warning,
    run_diagnostics,
    sparse_classes,
    training_warnings,
)


# ---- the test split's classes ---------------------------------------------------------------
def test_sparse_classes_names_each_short_class_with_its_count() -> None:
    # Counts per class: a 3, b 0, c 1, d 2; at least 2 wanted.
    labels = torch.tensor([0, 0, 0, 2, 3, 3])
    assert sparse_classes(labels, ["a", "b", "c", "d"], minimum=2) == [("b", 0), ("c", 1)]
    assert sparse_classes(np.array([0, 1]), ["a", "b"], minimum=1) == []
    assert sparse_classes([], ["a"], minimum=1) == [("a", 0)]  # an empty split: every class


def test_sparse_classes_refuses_labels_outside_the_classes_and_a_bad_minimum() -> None:
    with pytest.raises(ValueError, match=r"labels must be in 0\.\.1 \(one per class name\), "
                                         r"got 0\.\.2"):
        sparse_classes([0, 2], ["a", "b"], minimum=1)
    with pytest.raises(ValueError, match="minimum must be >= 1, got 0"):
        sparse_classes([0], ["a"], minimum=0)


# ---- training -------------------------------------------------------------------------------
def fit_rows(losses_by_round: dict[int, list[float]]) -> list[dict[str, float]]:
    return [{"round": r, "client": c, "train_loss": v}
            for r, vs in losses_by_round.items() for c, v in enumerate(vs)]


def test_a_mean_train_loss_that_rises_past_the_factor_is_divergence() -> None:
    # Round 1: mean (1 + 2) / 2 = 1.5; round 3: (3 + 5) / 2 = 4 > 1.5 * 1.5 = 2.25.
    fits = fit_rows({1: [1.0, 2.0], 2: [9.0, 9.0], 3: [3.0, 5.0]})
    assert training_warnings([], fits) == [
        ("training diverged: the clients' mean train loss (weighted by their images) rose "
         "from 1.5 (round 1) to 4 (round 3)")]


def test_the_mean_is_weighted_by_the_clients_images() -> None:
    # The default's one-image hospital: its loss jumps 2 -> 70 while the 128-image one falls
    # 1 -> 0.5. Unweighted (2+1)/2 = 1.5 -> (70+0.5)/2 = 35 would be divergence; weighted
    # (2*1 + 1*128)/129 = 1.008 -> (70*1 + 0.5*128)/129 = 1.039 is not.
    fits = [{"round": 1, "client": 0, "train_loss": 2.0, "num_examples": 1},
            {"round": 1, "client": 1, "train_loss": 1.0, "num_examples": 128},
            {"round": 2, "client": 0, "train_loss": 70.0, "num_examples": 1},
            {"round": 2, "client": 1, "train_loss": 0.5, "num_examples": 128}]
    assert training_warnings([], fits) == []
    fits[3]["train_loss"] = 2.0  # the large hospital rising too: (70 + 256) / 129 = 2.53
    assert training_warnings([], fits) == [
        "training diverged: the clients' mean train loss (weighted by their images) rose "
        "from 1.01 (round 1) to 2.53 (round 2)"]


def test_a_loss_at_the_factor_or_falling_is_not_divergence() -> None:
    assert DIVERGENCE_FACTOR == 1.5
    assert training_warnings([], fit_rows({1: [2.0], 2: [3.0]})) == []  # 3 = 1.5 * 2: not above
    assert training_warnings([], fit_rows({1: [2.0], 2: [0.5]})) == []
    assert training_warnings([], fit_rows({1: [2.0, 50.0]})) == []  # one round: nothing to compare


def test_a_non_finite_loss_is_an_explosion_not_a_divergence() -> None:
    fits = fit_rows({1: [1.0], 2: [math.nan], 3: [100.0]})
    utility = [{"round": 0, "loss": 2.3}, {"round": 3, "loss": math.inf}]
    assert training_warnings(utility, fits) == [
        "the global model's test loss became non-finite (training exploded)",
        "a client's train loss became non-finite (training exploded)"]


def test_fit_rows_without_a_numeric_train_loss_are_left_out() -> None:
    fits = [{"round": 1, "client": 0, "train_loss": 1.0}, {"round": 2, "client": 0},
            {"round": 2, "client": 1, "train_loss": "9"}, {"round": 2, "client": 2,
                                                           "train_loss": True}]
    assert training_warnings([], fits) == []  # round 2 has no usable loss


# ---- labels -----------------------------------------------------------------------------------
def test_a_wrong_label_is_counted_and_placed() -> None:
    assert label_recovery_warning("ig", [1.0, 0.0, 0.0], server_round=2, client=1) == \
        "ig recovered 2 of 3 labels wrongly (round 2, client 1)"
    assert label_recovery_warning("ig", [1.0, 1.0], server_round=2, client=1) is None


def test_attack_warnings_read_the_scored_rows_only() -> None:
    privacy = [{"round": 1, "client": 0, "num_images": 2, "attack_seconds": 1.0,
                "pairs": {"label_correct": [0.0, 1.0]}},
               {"round": 1, "client": 1, "skipped": "batch of 32 above the attack's 8"},
               {"round": 2, "client": 0, "num_images": 1, "attack_seconds": 1.0},  # deployment
               {"round": 2, "client": 1, "num_images": 1, "attack_seconds": 1.0,
                "pairs": {"label_correct": [1.0]}}]
    assert attack_warnings(privacy, attack="dlg") == [
        "dlg recovered 1 of 2 labels wrongly (round 1, client 0)"]


def test_run_diagnostics_say_where_each_warning_arose() -> None:
    fits = fit_rows({1: [1.0], 2: [2.0]})
    privacy = [{"round": 2, "client": 0, "pairs": {"label_correct": [0.0]}}]
    assert run_diagnostics([], fits, privacy, attack="ig") == [
        RunWarning(WHERE_TRAINING, "training diverged: the clients' mean train loss (weighted "
                                   "by their images) rose from 1 (round 1) to 2 (round 2)"),
        RunWarning(WHERE_ATTACK, "ig recovered 1 of 1 labels wrongly (round 2, client 0)")]


def test_deduplicated_keeps_each_message_once_where_it_came_first() -> None:
    got = deduplicated([RunWarning(WHERE_LOAD, "a"), RunWarning(WHERE_TRAINING, "b"),
                        RunWarning(WHERE_TRAINING, "a"), RunWarning(WHERE_LOAD, "b")])
    assert got == [RunWarning(WHERE_LOAD, "a"), RunWarning(WHERE_TRAINING, "b")]


# ---- recording the load-time warnings -------------------------------------------------------
def test_capture_records_user_warnings_once_and_shows_the_others() -> None:
    def check() -> list[str]:
        with capture_warnings() as caught:
            for _ in range(3):
                warnings.warn("data: few public images", stacklevel=1)
            warnings.warn("data: few test images", stacklevel=1)
            warnings.warn("old API", DeprecationWarning, stacklevel=1)
        return caught

    with pytest.warns(DeprecationWarning, match="old API"):  # shown, once the block ends
        caught = check()
    assert caught == ["data: few public images", "data: few test images"]


def test_capture_keeps_what_was_warned_before_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), capture_warnings() as caught:
        warnings.warn("data: few test images")
        raise RuntimeError("boom")
    assert caught == ["data: few test images"]
