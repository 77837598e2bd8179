"""Utility metrics of the trained model: accuracy and macro F1."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

LabelArray = torch.Tensor | np.ndarray | Sequence[int]


def _as_labels(values: LabelArray, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of class indices, got shape {array.shape}"
                         + (" (take argmax over the class axis first)" if array.ndim == 2 else ""))
    if (array.size and not np.issubdtype(array.dtype, np.integer)
            and not np.all(np.mod(array, 1) == 0)):
        raise ValueError(f"{name} must hold integer class indices, got dtype {array.dtype}")
    return array.astype(np.int64)


def _check_pair(preds: LabelArray, labels: LabelArray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_labels(preds, "preds")
    y = _as_labels(labels, "labels")
    if p.shape != y.shape:
        raise ValueError(f"preds and labels must have the same length, got {len(p)} and {len(y)}")
    if p.size == 0:
        raise ValueError("preds and labels are empty")
    return p, y


def accuracy(preds: LabelArray, labels: LabelArray) -> float:
    """Share of predictions equal to the label.

    Args:
        preds: ``(N,)`` predicted class indices (tensor, array or list).
        labels: ``(N,)`` true class indices.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: not 1-D integer class indices, different lengths, or empty.
    """
    p, y = _check_pair(preds, labels)
    return float(np.mean(p == y))


def macro_f1(preds: LabelArray, labels: LabelArray, num_classes: int) -> float:
    """Unweighted mean of the per-class F1 scores.

    Per class ``c``: ``F1 = 2 TP / (2 TP + FP + FN)``. A class absent from both ``preds`` and
    ``labels`` (``TP + FP + FN = 0``, F1 undefined) is left out of the mean; a class that is
    present but never predicted correctly counts with F1 = 0. This equals scikit-learn's
    ``f1_score(average="macro", labels=<classes present in preds or labels>)``.

    Args:
        preds: ``(N,)`` predicted class indices in ``[0, num_classes)``.
        labels: ``(N,)`` true class indices in ``[0, num_classes)``.
        num_classes: number of classes, ``>= 1``.

    Returns:
        Macro F1 in ``[0, 1]``.

    Raises:
        ValueError: ``num_classes < 1``, indices outside ``[0, num_classes)``, or the checks of
            :func:`accuracy`.
    """
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be an integer >= 1, got {num_classes}")
    num_classes = int(num_classes)
    p, y = _check_pair(preds, labels)
    for name, array in (("preds", p), ("labels", y)):
        if array.min() < 0 or array.max() >= num_classes:
            raise ValueError(f"{name} must be class indices in [0, {num_classes}), got values "
                             f"from {array.min()} to {array.max()}")
    confusion = np.bincount(y * num_classes + p, minlength=num_classes ** 2)
    confusion = confusion.reshape(num_classes, num_classes)  # rows: true, cols: predicted
    tp = np.diag(confusion).astype(np.float64)
    fp = confusion.sum(axis=0) - tp
    fn = confusion.sum(axis=1) - tp
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    return float(np.mean(2 * tp[present] / denominator[present]))
