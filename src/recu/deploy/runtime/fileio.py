"""Reading a deployment file without PyTorch: its validated JSON metadata and its tensors as NumPy arrays.

A deployment file is a safetensors file (written by :func:`recu.deploy.export`) whose metadata holds
one JSON document under :data:`METADATA_KEY`. Nothing from the file is executed: tensors are read by
safetensors, metadata by ``json``. This module imports numpy only (safetensors on first use).
"""

from __future__ import annotations

import json
import os
from typing import Union

import numpy as np

from .validate import DeployFileError

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "METADATA_KEY", "read_metadata", "read_tensors"]

FORMAT_NAME = "recu-deploy"
FORMAT_VERSION = 1
METADATA_KEY = "recu_deploy"


def _not_safetensors(path: Union[str, os.PathLike], error: Exception) -> DeployFileError:
    """The one-line error for a file that safetensors cannot parse."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return DeployFileError(f"{path} is not a recu deployment file (not safetensors): {type(error).__name__}: {first}")


def read_metadata(path: Union[str, os.PathLike]) -> dict:
    """The JSON metadata of a deployment file, its format name and version checked (the rest is checked
    with the tensors by :func:`recu.deploy.validate.check_file`, which the loaders call).

    Raises:
        DeployFileError: (a ValueError) not a deployment file, or another format or version.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a foreign file
        raise _not_safetensors(path, e) from None
    if raw is None:
        raise DeployFileError(f"{path} is not a recu deployment file (no {METADATA_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except (ValueError, RecursionError) as e:  # RecursionError: JSON nested too deeply
        raise DeployFileError(f"{path} is not a recu deployment file (its {METADATA_KEY!r} metadata is not JSON: "
                              f"{e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DeployFileError(f"{path}: format {found!r} is not {FORMAT_NAME!r}")
    if meta.get("version") != FORMAT_VERSION or isinstance(meta.get("version"), bool):
        raise DeployFileError(f"{path}: format version {meta.get('version')!r} is not supported (this recu "
                              f"reads version {FORMAT_VERSION})")
    return meta


def read_tensors(path: Union[str, os.PathLike]) -> dict[str, np.ndarray]:
    """Every tensor of a deployment file as a NumPy array, by key (``binary.<layer>.bits``, ``float.<key>``, ...)."""
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - as in read_metadata
        raise _not_safetensors(path, e) from None
