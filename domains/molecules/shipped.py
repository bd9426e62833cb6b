"""Model folders (``config.json`` + ``model.safetensors``), shared by the SELFIES and graph models.

``read_folder`` checks and reads a saved folder; ``shipped_folder`` resolves a shipped model's name to
its folder under ``weights/`` with clear errors (unknown name, weights not trained yet).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Union

import torch

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def read_folder(folder: Union[str, Path], what: str) -> Tuple[Dict[str, Any], Dict[str, torch.Tensor]]:
    """(config, state dict) of a saved model folder; ValueError naming ``what`` when a file is missing."""
    from safetensors.torch import load_file
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} holds no {what} (config.json and model.safetensors)")
    return json.loads((folder / "config.json").read_text()), load_file(str(folder / "model.safetensors"))


def shipped_folder(name: str, table: Mapping[str, str], kind: str, trainer: str) -> Path:
    """The folder of shipped model ``name`` (a key of ``table``); ``trainer`` is the module that trains it."""
    if name not in table:
        raise ValueError(f"unknown pretrained {kind} model {name!r}; valid: {', '.join(table)}")
    folder = WEIGHTS_DIR / name
    if not (folder / "model.safetensors").is_file():
        raise ValueError(f"the weights of {name!r} are missing from {folder}; train them with "
                         f"python -m polydiff.domains.molecules.{trainer} --out {folder}")
    return folder


__all__ = ["WEIGHTS_DIR", "read_folder", "shipped_folder"]
