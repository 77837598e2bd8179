"""Accuracy and macro F1 (fl_shadow.metrics)."""

import numpy as np
import pytest
import torch

from fl_shadow import metrics

# Hand-computed example, 4 classes, class 3 absent from preds and labels:
#   class 0: TP 1 (i=0), FP 1 (i=1), FN 1 (i=5) -> F1 = 2/(2+1+1) = 1/2
#   class 1: TP 1 (i=2), FP 0,       FN 1 (i=1) -> F1 = 2/(2+0+1) = 2/3
#   class 2: TP 2 (i=3,4), FP 1 (i=5), FN 0     -> F1 = 4/(4+1+0) = 4/5
#   class 3: TP = FP = FN = 0                   -> undefined, excluded
PREDS = [0, 0, 1, 2, 2, 2]
LABELS = [0, 1, 1, 2, 2, 0]


def test_accuracy_hand_computed():
    assert metrics.accuracy(torch.tensor(PREDS), torch.tensor(LABELS)) == pytest.approx(4 / 6)


def test_macro_f1_hand_computed_excludes_absent_class():
    value = metrics.macro_f1(torch.tensor(PREDS), torch.tensor(LABELS), 4)
    assert value == pytest.approx((1 / 2 + 2 / 3 + 4 / 5) / 3)  # not / 4


def test_macro_f1_counts_a_present_but_never_predicted_class_as_zero():
    # class 0: TP 1, FP 1, FN 0 -> 2/3; class 1: TP 0, FP 0, FN 1 -> 0
    assert metrics.macro_f1([0, 0], [0, 1], num_classes=2) == pytest.approx(1 / 3)


def test_perfect_predictions_and_input_types():
    labels = np.array([2, 0, 1, 1])
    assert metrics.accuracy(labels, labels) == 1.0
    assert metrics.macro_f1(labels.tolist(), torch.from_numpy(labels), 5) == 1.0
    assert metrics.macro_f1(torch.tensor([1.0, 0.0]), [1, 0], 2) == 1.0  # integral floats


def test_one_sample():
    assert metrics.accuracy([3], [2]) == 0.0
    assert metrics.macro_f1([3], [2], 4) == 0.0


@pytest.mark.parametrize(("preds", "labels", "message"), [
    ([0, 1], [0], r"same length, got 2 and 1"),
    ([], [], r"empty"),
    (torch.zeros(3, 2), [0, 1, 0], r"1-D array of class indices.*argmax"),
    ([0.5, 1.0], [0, 1], r"integer class indices"),
])
def test_invalid_labels_raise(preds, labels, message):
    with pytest.raises(ValueError, match=message):
        metrics.accuracy(preds, labels)
    with pytest.raises(ValueError, match=message):
        metrics.macro_f1(preds, labels, 2)


@pytest.mark.parametrize(("preds", "labels", "num_classes", "message"), [
    ([0, 2], [0, 1], 2, r"preds must be class indices in \[0, 2\), got values from 0 to 2"),
    ([0, 1], [-1, 1], 2, r"labels must be class indices in \[0, 2\)"),
    ([0], [0], 0, r"num_classes must be an integer >= 1, got 0"),
])
def test_macro_f1_rejects_out_of_range(preds, labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        metrics.macro_f1(preds, labels, num_classes)
