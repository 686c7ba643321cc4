"""Nested state dicts (optimizer, samplers) as safetensors + JSON, never pickle.

A state is split into its tensors, written as one safetensors file under flat
dotted keys, and everything else, written as JSON with the tensors' places
marked. Loading reverses it exactly (tensors keep dtype and shape).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

_TENSOR = "__tensor__"


def _split(value: Any, key: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, dict):
        return {"__dict__": [[_split(k, f"{key}.k{i}", tensors), _split(v, f"{key}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        items = [_split(v, f"{key}.{i}", tensors) for i, v in enumerate(value)]
        return {"__tuple__": items} if isinstance(value, tuple) else items
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at '{key}' without pickle")


def _join(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            return tensors[value[_TENSOR]]
        if "__dict__" in value:
            return {_join(k, tensors): _join(v, tensors) for k, v in value["__dict__"]}
        if "__tuple__" in value:
            return tuple(_join(v, tensors) for v in value["__tuple__"])
    if isinstance(value, list):
        return [_join(v, tensors) for v in value]
    return value


def save_state(state: Any, folder: Path, name: str) -> None:
    """Write ``name.json`` and (if there are tensors) ``name.safetensors`` in ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _split(state, "s", tensors)
    (folder / f"{name}.json").write_text(json.dumps(structure))
    if tensors:
        save_file(tensors, str(folder / f"{name}.safetensors"))


def load_state(folder: Path, name: str) -> Any:
    structure = json.loads((folder / f"{name}.json").read_text())
    file = folder / f"{name}.safetensors"
    tensors = load_file(str(file)) if file.exists() else {}
    return _join(structure, tensors)
