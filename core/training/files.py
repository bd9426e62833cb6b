"""Crash-safe file primitives: atomic writes (temp file + fsync + os.replace) and safe tensor reads.

Nothing here unpickles: tensors go through safetensors and metadata through JSON, so reading a file
can never execute code. Every read error becomes a ValueError naming the file.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any, Dict, Mapping, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

PathLike = Union[str, os.PathLike]


def fsync_dir(path: PathLike) -> None:
    """fsync a directory so that a rename inside it survives a crash (no-op where unsupported)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the complete new one."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_json(path: PathLike, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode())


def read_json(path: PathLike) -> Any:
    """Parse a JSON file; a missing or malformed file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing file {path}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"malformed JSON in {path}: {e}") from None


def _unshare(tensors: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous CPU tensors, cloning any that share storage with an earlier one (safetensors refuses
    shared storage; tied weights load back correctly from the duplicates)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise ValueError(f"tensor file entry {k!r} is a {type(v).__name__}, not a tensor")
        v = v.detach().to("cpu").contiguous()
        key = (v.untyped_storage().data_ptr(), v.untyped_storage().nbytes()) if v.numel() else None
        if key is not None and key in seen:
            v = v.clone()
        elif key is not None:
            seen.add(key)
        out[k] = v
    return out


def save_tensors(path: PathLike, tensors: Mapping[str, torch.Tensor], fsync: bool = True) -> None:
    """Write tensors as safetensors (to ``path`` directly: callers make it atomic by writing inside a
    temporary directory, or use ``atomic_save_tensors``)."""
    save_file(_unshare(tensors), str(path))
    if fsync:
        fd = os.open(str(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_save_tensors(path: PathLike, tensors: Mapping[str, torch.Tensor]) -> None:
    """``save_tensors`` through a temporary file and os.replace."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        save_tensors(tmp, tensors)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def load_tensors(path: PathLike, device: Union[str, torch.device] = "cpu") -> Dict[str, torch.Tensor]:
    """Read a safetensors file; a missing, truncated or non-safetensors file is a ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"missing tensor file {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(f"{path} is not a valid safetensors file (truncated or corrupt?): {e}") from None


def write_model_folder(folder: PathLike, config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> Path:
    """Write a model folder (``config.json`` + ``model.safetensors``, each atomically): the layout
    ``read_model_folder`` reads. Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(folder / "model.safetensors", state)
    write_json(folder / "config.json", dict(config))
    return folder


def read_model_folder(folder: PathLike, what: str, model: Union[str, None] = None
                      ) -> "tuple[Dict[str, Any], Dict[str, torch.Tensor]]":
    """(config, state dict) of a saved model folder (``config.json`` + ``model.safetensors``), the layout
    every domain model is shipped in. ``what`` names the model in errors; with ``model``, the config's
    "model" entry must equal it. A missing file, malformed JSON, another kind of model or a truncated
    weights file is a ValueError naming the file; nothing is unpickled."""
    folder = Path(folder)
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ValueError(f"{folder} holds no {what} (config.json and model.safetensors)")
    config = read_json(folder / "config.json")
    if not isinstance(config, dict):
        raise ValueError(f"{folder / 'config.json'} is not a JSON object")
    if model is not None and config.get("model") != model:
        raise ValueError(f"{folder / 'config.json'} does not describe a {what} (expected model {model!r}, "
                         f"got {config.get('model')!r})")
    return config, load_tensors(folder / "model.safetensors")


__all__ = ["atomic_write_bytes", "write_json", "read_json", "save_tensors", "atomic_save_tensors", "load_tensors",
           "read_model_folder", "write_model_folder", "fsync_dir"]
