"""Find client data anywhere in an object graph (the attacker-isolation tests).

:func:`find_client_data` walks everything reachable from some objects, as far as Python lets a
program reach: dataclass fields, mappings, sequences, instance ``__dict__`` s and slots, a
module's parameters and buffers, and the cells, defaults and ``self`` of functions, closures,
bound methods and partials. It reports each place where

* a tensor or array holds one of the client's images (raw in [0, 1] or normalized), as a slice
  along its leading dimensions or as a flat vector;
* a tensor or array holds the client's label vector as a contiguous run (any dtype);
* a dataset object (``ImageSet``, ``DatasetSplits``) is reachable at all.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from fl_shadow.data import DatasetSplits, ImageSet

_ATOMS = (str, bytes, bytearray, int, float, complex, bool, type(None), torch.dtype,
          torch.device, np.dtype)


def find_client_data(roots: Mapping[str, Any], images: torch.Tensor, labels: torch.Tensor, *,
                     mean: tuple[float, ...], std: tuple[float, ...],
                     max_objects: int = 200_000) -> list[str]:
    """Paths (``observation.client_state['fc.bias']``) at which client data is reachable.

    Args:
        roots: the objects to walk, by name.
        images: ``(N, C, H, W)`` the client's images in [0, 1].
        labels: ``(N,)`` their labels (checked as a contiguous run; use N >= 3 so that a run
            cannot occur by chance).
        mean, std: the normalization, to recognise normalized images too.
    """
    images = images.detach().cpu().double()
    m = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    forms = torch.cat([images, (images - m) / s])          # (2N, C, H, W)
    shape = tuple(images.shape[1:])
    target = labels.detach().cpu().double().flatten()
    found: list[str] = []
    seen: set[int] = set()
    for name, root in roots.items():
        for path, value in _walk(root, name, seen, max_objects):
            if isinstance(value, (ImageSet, DatasetSplits)):
                found.append(f"{path} (a {type(value).__name__})")
                continue
            array = _as_array(value)
            if array is None:
                continue
            if _holds_image(array, forms, shape) or _holds_run(array, target):
                found.append(path)
    return found


def _as_array(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double() if value.numel() else None
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf" and value.size:
        return torch.from_numpy(np.asarray(value, dtype=np.float64))
    return None


def _holds_image(array: torch.Tensor, forms: torch.Tensor, shape: tuple[int, ...]) -> bool:
    numel = int(np.prod(shape))
    if array.ndim >= len(shape) and tuple(array.shape[-len(shape):]) == shape:
        candidates = array.reshape(-1, numel)
    elif array.ndim == 1 and array.numel() == numel:
        candidates = array.reshape(1, numel)
    else:
        return False
    truth = forms.reshape(len(forms), numel)
    distance = torch.cdist(candidates, truth)             # (M, 2N)
    return bool((distance <= 1e-5 * numel ** 0.5).any())


def _holds_run(array: torch.Tensor, target: torch.Tensor) -> bool:
    flat = array.flatten()
    k = target.numel()
    if flat.numel() < k:
        return False
    windows = flat.unfold(0, k, 1)                        # (L - k + 1, k)
    return bool((windows == target).all(dim=1).any())


def _walk(obj: Any, path: str, seen: set[int], budget: int) -> Iterator[tuple[str, Any]]:
    stack = [(path, obj)]
    while stack:
        path, obj = stack.pop()
        if isinstance(obj, _ATOMS) or isinstance(obj, (types.ModuleType, type)):
            continue
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if len(seen) > budget:
            raise RuntimeError(f"object graph larger than {budget} objects at {path}")
        yield path, obj
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            continue
        stack.extend(_children(obj, path))


def _children(obj: Any, path: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(obj, Mapping):
        out += [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        out += [(f"{path}.<key {k!r}>", k) for k in obj if not isinstance(k, _ATOMS)]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        out += [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    if isinstance(obj, functools.partial):
        out += [(f"{path}.func", obj.func), (f"{path}.args", obj.args),
                (f"{path}.keywords", obj.keywords)]
    if isinstance(obj, types.MethodType):
        out += [(f"{path}.__self__", obj.__self__), (f"{path}.__func__", obj.__func__)]
    if isinstance(obj, types.FunctionType):
        for name, cell in zip(obj.__code__.co_freevars, obj.__closure__ or ()):
            try:
                out.append((f"{path}.<closure {name}>", cell.cell_contents))
            except ValueError:  # an empty cell
                pass
        out += [(f"{path}.__defaults__", obj.__defaults__),
                (f"{path}.__kwdefaults__", obj.__kwdefaults__)]
    for name in getattr(type(obj), "__slots__", ()):
        if hasattr(obj, name):
            out.append((f"{path}.{name}", getattr(obj, name)))
    attrs = getattr(obj, "__dict__", None)
    if isinstance(attrs, dict):
        out += [(f"{path}.{k}", v) for k, v in attrs.items()]
    return out


__all__ = ["find_client_data"]
