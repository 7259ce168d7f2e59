"""tf.data input pipelines over the preprocessed cache (:mod:`vnet_tf.data.cache`).

Training batches are a pure function of ``(seed, batch index)``: batch ``i`` draws its
cases from a per-epoch permutation of the training cases and its patch positions from
``numpy.random.default_rng([seed, i])``. The same seed therefore gives the same batches on
every run, in any number of parallel workers, and a resumed run continues exactly at
``start_batch``.

A patch is centred on a random foreground voxel with probability ``foreground_fraction``
(nnU-Net uses 1/3; with ``class_balance`` the foreground class is drawn uniformly among
the classes present in the case, so small structures are seen as often as large ones),
otherwise placed uniformly at random; volumes smaller than the patch are zero-padded
(label 0).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib
from typing import List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from vnet_tf.data.cache import CachedCase, load_cached_case
from vnet_tf.core.errors import UserError
from vnet_tf.core.io import PathLike
from vnet_tf.data.preprocess import crop_or_pad
from vnet_tf.training.config import TrainConfig

MAX_LOCATIONS_PER_CLASS = 20_000


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """Settings of the training input pipeline.

    ``memory_budget_bytes``: decoded volumes are kept in memory when their total size fits,
    otherwise each batch reads its cases from the cache files. ``parallel_calls``: batches
    built at once (``-1``: tf.data's autotune).
    """

    patch_size_zyx: Tuple[int, int, int] = TrainConfig.patch_size_zyx
    batch_size: int = TrainConfig.batch_size
    foreground_fraction: float = TrainConfig.foreground_fraction
    class_balance: bool = TrainConfig.class_balance
    seed: int = TrainConfig.seed
    memory_budget_bytes: int = 4 << 30
    parallel_calls: int = -1
    prefetch: int = 2

    def validate(self) -> None:
        if len(self.patch_size_zyx) != 3 or min(self.patch_size_zyx) < 1:
            raise ValueError(f"patch_size_zyx must be 3 positive sizes (z, y, x), got {self.patch_size_zyx!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not 0.0 <= self.foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {self.foreground_fraction!r}")


class CaseStore:
    """The training cases, in memory when they fit ``memory_budget_bytes`` (read in parallel
    threads), with each case's foreground voxel locations per class (subsampled to at most
    ``MAX_LOCATIONS_PER_CLASS``) for foreground-biased sampling."""

    def __init__(self, paths: Sequence[PathLike], memory_budget_bytes: int = 4 << 30, workers: int = 4):
        if not paths:
            raise ValueError("the training pipeline needs at least one cached case, got none")
        self.paths = [pathlib.Path(p) for p in paths]
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
            cases = list(pool.map(load_cached_case, self.paths))
        for path, case in zip(self.paths, cases):
            if case.label is None:
                raise UserError(f"cached case {path} has no label; training needs labelled cases")
        self.channels = int(cases[0].image.shape[-1])
        for path, case in zip(self.paths, cases):
            if case.image.shape[-1] != self.channels:
                raise UserError(f"cached case {path} has {case.image.shape[-1]} channels, "
                                f"expected {self.channels} like {self.paths[0]}: one channel count for every case")
        rng = np.random.default_rng(0)
        self.locations = [self._foreground_locations(case.label, rng) for case in cases]
        total = sum(c.image.nbytes + c.label.nbytes for c in cases)
        self.in_memory = total <= memory_budget_bytes
        self._cases: Optional[List[CachedCase]] = cases if self.in_memory else None

    @staticmethod
    def _foreground_locations(label, rng):
        out = {}
        for cls in np.unique(label):
            if cls == 0:
                continue
            flat = np.flatnonzero(label == cls)
            if flat.size > MAX_LOCATIONS_PER_CLASS:
                flat = rng.choice(flat, MAX_LOCATIONS_PER_CLASS, replace=False)
            out[int(cls)] = np.stack(np.unravel_index(flat, label.shape), axis=1).astype(np.int32)
        return out

    def __len__(self):
        return len(self.paths)

    def case(self, index: int) -> CachedCase:
        if self._cases is not None:
            return self._cases[index]
        return load_cached_case(self.paths[index])


def crop_patch(image, label, start, patch):
    """The window ``[start, start + patch)`` of ``image (z, y, x, c)`` (float32) and
    ``label`` (int32), zero-filled where it leaves the volume."""
    return (crop_or_pad(image.astype(np.float32, copy=False), start, patch),
            crop_or_pad(label.astype(np.int32, copy=False), start, patch))


def patch_start(shape, patch, rng, centre=None):
    """Start corner of a patch: uniform over positions that keep it inside the volume (or
    centred in it where the volume is smaller), or centred on ``centre`` and shifted inside."""
    size, patch = np.array(shape[:3]), np.array(patch)
    low, high = np.minimum(0, (size - patch) // 2), np.maximum(0, size - patch)
    if centre is None:
        return np.array([rng.integers(lo, hi + 1) for lo, hi in zip(low, high)])
    return np.clip(np.asarray(centre) - patch // 2, low, high)


class PatchSampler:
    """Builds training batch ``i`` as a pure function of ``(seed, i)``."""

    def __init__(self, store: CaseStore, config: PipelineConfig):
        config.validate()
        self.store, self.config = store, config

    def case_indices(self, batch_index: int) -> np.ndarray:
        n, b = len(self.store), self.config.batch_size
        positions = np.arange(batch_index * b, (batch_index + 1) * b)
        out = np.empty(b, np.int64)
        for j, pos in enumerate(positions):
            epoch = int(pos // n)
            order = np.random.default_rng([self.config.seed, epoch, 1]).permutation(n)
            out[j] = order[pos % n]
        return out

    def batch(self, batch_index: int):
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, int(batch_index), 2])
        images, labels = [], []
        for index in self.case_indices(int(batch_index)):
            case = self.store.case(int(index))
            locations = self.store.locations[int(index)]
            centre = None
            if locations and rng.random() < cfg.foreground_fraction:
                classes = sorted(locations)
                if cfg.class_balance:
                    points = locations[classes[rng.integers(len(classes))]]
                else:
                    points = np.concatenate([locations[c] for c in classes])
                centre = points[rng.integers(len(points))]
            start = patch_start(case.image.shape, cfg.patch_size_zyx, rng, centre)
            image, label = crop_patch(case.image, case.label, start, cfg.patch_size_zyx)
            images.append(image)
            labels.append(label)
        return np.stack(images), np.stack(labels)


def training_dataset(paths: Sequence[PathLike], config: PipelineConfig, start_batch: int = 0,
                     host_augmentation=None, deterministic: bool = True,
                     store: Optional[CaseStore] = None) -> tf.data.Dataset:
    """An endless ``tf.data.Dataset`` of ``{"image": (B, pz, py, px, C) float32,
    "label": (B, pz, py, px) int32}`` batches, starting at batch ``start_batch``.

    ``host_augmentation``: an augmentation layer (:mod:`vnet_tf.augment.chain`) mapped over the
    batches in the pipeline. Its random draws come from the layer's own generator, so with
    ``deterministic`` they are made in batch order (one batch at a time).
    """
    config.validate()
    store = store or CaseStore(paths, config.memory_budget_bytes)
    sampler = PatchSampler(store, config)
    patch = tuple(int(p) for p in config.patch_size_zyx)
    image_shape = (config.batch_size,) + patch + (store.channels,)
    label_shape = (config.batch_size,) + patch
    parallel = tf.data.AUTOTUNE if config.parallel_calls < 0 else config.parallel_calls

    def make(index):
        image, label = tf.numpy_function(lambda i: sampler.batch(int(i)), [index], (tf.float32, tf.int32),
                                         stateful=False)
        image.set_shape(image_shape)
        label.set_shape(label_shape)
        return {"image": image, "label": label}

    ds = tf.data.Dataset.counter(start=int(start_batch))
    ds = ds.map(make, num_parallel_calls=parallel, deterministic=deterministic)
    if host_augmentation is not None:
        if deterministic:  # one batch at a time: the layer's draws follow batch order
            ds = ds.map(host_augmentation)
        else:
            ds = ds.map(host_augmentation, num_parallel_calls=parallel, deterministic=False)
    return ds.prefetch(config.prefetch if config.prefetch >= 0 else tf.data.AUTOTUNE)
