"""Training-state checkpoints that are never half-written.

A checkpoint is one ``.npz`` file holding every variable of the model, the optimiser
(moments, iteration counter, loss scale), the augmentation random generators, and a JSON
``meta`` record (step, best score, ...). It is written under a temporary name in the same
folder, flushed to disk, and renamed over the previous one, so a process killed at any
moment leaves either the old or the new checkpoint, complete.
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from typing import Dict, Optional, Tuple

import numpy as np

from vnet_tf.core.errors import UserError
from vnet_tf.core.folders import atomic_write
from vnet_tf.core.io import PathLike
from vnet_tf.core.npz import load_npz


def _read(path: pathlib.Path, keys) -> dict:
    """The chosen arrays and the parsed ``meta`` of a checkpoint; :class:`UserError` naming
    the file where it is truncated, corrupt or not a checkpoint."""
    try:
        data = load_npz(path, lambda k: k == "__meta__" or keys(k))
        meta = json.loads(str(data.pop("__meta__")))
        if not isinstance(meta, dict):
            raise ValueError(f"its meta record is a {type(meta).__name__}")
    except FileNotFoundError:
        raise
    except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as err:
        reason = "it has no meta record" if isinstance(err, KeyError) else f"{type(err).__name__}: {err}"
        raise UserError(f"{path}: expected a vnet_tf checkpoint, found a truncated or corrupt file "
                        f"({reason})") from err
    return data, meta


def _keyed(groups: Dict[str, list]) -> Dict[str, object]:
    """Variables keyed by group and position (names are not stable across processes: Keras
    numbers unnamed variables globally). Shapes are checked on restore."""
    out = {}
    for group, variables in groups.items():
        for i, variable in enumerate(variables):
            out[f"{group}/{i:04d}"] = variable
    return out


def save_checkpoint(path: PathLike, groups: Dict[str, list], meta: dict) -> pathlib.Path:
    """Writes ``{group: [variables]}`` and ``meta`` atomically to ``path``."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {key: np.asarray(variable.numpy() if hasattr(variable, "numpy") else variable)
              for key, variable in _keyed(groups).items()}
    arrays["__meta__"] = np.array(json.dumps(meta))
    return atomic_write(path, lambda handle: np.savez(handle, **arrays))


def read_meta(path: PathLike) -> Optional[dict]:
    """The ``meta`` record of a checkpoint, or ``None`` where there is none."""
    path = pathlib.Path(path)
    if not path.is_file():
        return None
    return _read(path, lambda key: False)[1]


def restore_checkpoint(path: PathLike, groups: Dict[str, list], only_groups: bool = False) -> Tuple[dict, int]:
    """Assigns every variable of ``groups`` from ``path``; returns ``(meta, count)``.

    ``only_groups``: ignore stored groups not named in ``groups`` (e.g. restore the model
    alone from a full training checkpoint).

    Raises :class:`UserError` naming the file where it is truncated or corrupt, a variable is
    missing from it, it holds variables the objects lack, or a shape differs.
    """
    path = pathlib.Path(path)
    keyed = _keyed(groups)
    data, meta = _read(path, lambda k: not only_groups or k.split("/")[0] in groups)
    # Keys are "group/index"; files of the first version appended "/name": dropped.
    stored = {"/".join(k.split("/")[:2]): value for k, value in data.items()}
    missing = sorted(set(keyed) - set(stored))
    unused = sorted(set(stored) - set(keyed))
    if missing or unused:
        raise UserError(f"checkpoint {path} does not match the model being trained: "
                        f"{len(missing)} variables missing from it (e.g. {missing[:3]}), "
                        f"{len(unused)} not used (e.g. {unused[:3]}); was it written with other settings?")
    for key, variable in keyed.items():
        value = stored[key]
        if tuple(value.shape) != tuple(variable.shape):
            name = getattr(variable, "path", key)
            raise UserError(f"checkpoint {path}: variable {key} ({name}) has shape {value.shape}, "
                            f"the model expects {tuple(variable.shape)}")
        variable.assign(value)
    return meta, len(keyed)
