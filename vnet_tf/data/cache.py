"""Preprocess a dataset once, in parallel, into a cache that epochs read instead of the files.

Layout: ``CACHE_DIR/<config key>/config.json`` (the :class:`PreprocessConfig` that made the
cache) and one ``<case id>.npz`` per case holding ``image`` float32 ``(z, y, x, c)``,
``label`` uint8 ``(z, y, x)`` (absent without a label) and ``source`` (size and modification
time of every input file). A cached case is reused only while its config key and source fingerprint
match; files are written under a temporary name and renamed, so an interrupted run never
leaves a half-written case behind.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from vnet_tf.data.cases import Case
from vnet_tf.core.errors import UserError, describe
from vnet_tf.core.folders import CACHE_TEMPORARIES, atomic_write, atomic_write_text, remove_stale, writable_folder
from vnet_tf.core.io import PathLike, read_image
from vnet_tf.core.npz import load_npz
from vnet_tf.data.preprocess import PreprocessConfig, preprocess_case


@dataclasses.dataclass(frozen=True)
class CachedCase:
    case_id: str
    image: np.ndarray
    label: Optional[np.ndarray]


def config_key(config: PreprocessConfig) -> str:
    """A short stable hash of the preprocessing settings."""
    text = json.dumps(config.to_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def source_fingerprint(case: Case) -> str:
    files = list(case.images) + ([case.label] if case.label is not None else [])
    entries = []
    for path in files:
        stat = pathlib.Path(path).stat()
        entries.append([str(path), stat.st_size, stat.st_mtime_ns])
    return json.dumps(entries)


def read_case(case: Case) -> Tuple[List[sitk.Image], Optional[sitk.Image]]:
    """The SimpleITK images of a case's channel files and its label (if any)."""
    images = [read_image(p) for p in case.images]
    label = read_image(case.label) if case.label is not None else None
    return images, label


def _is_fresh(path: pathlib.Path, fingerprint: str) -> bool:
    try:
        data = load_npz(path, ["source"])
        return str(data["source"]) == fingerprint
    except (OSError, KeyError, ValueError):
        return False


def cache_case(case: Case, config: PreprocessConfig, out_dir: pathlib.Path) -> Tuple[pathlib.Path, bool]:
    """Preprocesses one case into ``out_dir`` unless a fresh copy is there.

    Returns ``(path, reused)``.
    """
    target = out_dir / f"{case.case_id}.npz"
    fingerprint = source_fingerprint(case)
    if _is_fresh(target, fingerprint):
        return target, True
    images, label = read_case(case)
    image, label_array, _ = preprocess_case(images, label, config)
    arrays = {"image": image, "source": np.array(fingerprint)}
    if label_array is not None:
        arrays["label"] = label_array
    atomic_write(target, lambda handle: np.savez(handle, **arrays))
    return target, False


def preprocess_dataset(cases: Sequence[Case], config: PreprocessConfig, cache_dir: PathLike,
                       workers: Optional[int] = None,
                       on_case: Optional[Callable[[str, bool], None]] = None) -> List[pathlib.Path]:
    """Caches every case (in parallel threads; SimpleITK releases the GIL) and returns the
    cached files in the order of ``cases``. ``on_case(case_id, reused)`` is called as each
    case finishes. Errors name the case's files."""
    config.validate()
    out_dir = writable_folder(pathlib.Path(cache_dir) / config_key(config), "cache_dir")
    remove_stale(out_dir, CACHE_TEMPORARIES)
    config_file = out_dir / "config.json"
    if not config_file.exists():
        atomic_write_text(config_file, json.dumps(config.to_dict(), indent=2))
    workers = workers or os.cpu_count() or 1
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(cache_case, case, config, out_dir): case for case in cases}
        results = {}
        for future in concurrent.futures.as_completed(futures):
            case = futures[future]
            try:
                results[case.case_id], reused = future.result()
            except Exception as err:
                files = ", ".join(map(str, case.images + ((case.label,) if case.label is not None else ())))
                if describe(err) is None:
                    raise RuntimeError(f"preprocessing case {case.case_id} ({files}) failed: {err}") from err
                raise UserError(f"preprocessing case {case.case_id} ({files}) failed: {describe(err)}") from err
            if on_case is not None:
                on_case(case.case_id, reused)
    return [results[case.case_id] for case in cases]


def load_cached_case(path: PathLike) -> CachedCase:
    """Reads one cached case."""
    data = load_npz(path)
    return CachedCase(pathlib.Path(path).stem, data["image"], data.get("label"))
