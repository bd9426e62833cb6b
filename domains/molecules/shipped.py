"""Shipped molecule and graph models: ``shipped_folder`` resolves a shipped model's name to its folder
under ``weights/`` with clear errors (unknown name, weights not trained yet). Folders are read with
``polydiff.core.training.files.read_model_folder``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


def shipped_folder(name: str, table: Mapping[str, str], kind: str, trainer: str, command: Optional[str] = None) -> Path:
    """The folder of shipped model ``name`` (a key of ``table``); ``trainer`` is the module that trains it
    (or ``command``, the full command that does)."""
    if name not in table:
        raise ValueError(f"unknown pretrained {kind} model {name!r}; valid: {', '.join(table)}")
    folder = WEIGHTS_DIR / name
    if not (folder / "model.safetensors").is_file():
        how = command or f"python -m polydiff.domains.molecules.{trainer} --out {folder}"
        raise ValueError(f"the weights of {name!r} are missing from {folder}; train them with {how}")
    return folder


__all__ = ["WEIGHTS_DIR", "shipped_folder"]
