"""A first, simple training loop: check -> preprocess + cache -> random patches -> V-Net.

This is the path the demo runs end to end. Not here yet (see the README status): exact
resume, TensorBoard, tf.data with on-device augmentation, mixed precision, tf.distribute
and sliding-window validation.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time
from typing import Callable, Optional, Tuple

import keras
import numpy as np

from vnet_tf.cache import load_cached_case, preprocess_dataset
from vnet_tf.cases import find_cases
from vnet_tf.check import check_dataset
from vnet_tf.losses import DiceCELoss, dice_per_class
from vnet_tf.model import build_vnet, required_divisor
from vnet_tf.preprocess import PreprocessConfig


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    data_dir: str
    workdir: str
    cache_dir: str
    layout: str = "auto"
    target_spacing_zyx: Optional[Tuple[float, float, float]] = None
    patch_size_zyx: Tuple[int, int, int] = (32, 32, 32)
    base_width: int = 8
    depth: int = 4
    kernel_size: int = 3
    normalization: str = "instance"
    batch_size: int = 2
    steps: int = 200
    learning_rate: float = 3e-3
    foreground_fraction: float = 1 / 3
    validation_fraction: float = 0.2
    seed: int = 0


def sample_patch(image, label, patch, rng, foreground: bool):
    """A random ``patch`` window (zero-padded where the volume is smaller); centred on a
    random foreground voxel when ``foreground`` and the label has one."""
    size = np.array(image.shape[:3])
    patch = np.array(patch)
    if foreground and label.any():
        fg = np.argwhere(label > 0)
        start = fg[rng.integers(len(fg))] - patch // 2
    else:
        start = np.array([rng.integers(min(0, s - p), max(0, s - p) + 1) for s, p in zip(size, patch)])
    start = np.clip(start, np.minimum(0, size - patch), np.maximum(0, size - patch))
    out_img = np.zeros(tuple(patch) + image.shape[3:], np.float32)
    out_lab = np.zeros(tuple(patch), np.uint8)
    src = tuple(slice(max(a, 0), min(a + p, s)) for a, p, s in zip(start, patch, size))
    dst = tuple(slice(sl.start - a, sl.stop - a) for sl, a in zip(src, start))
    out_img[dst] = image[src]
    out_lab[dst] = label[src]
    return out_img, out_lab


def predict_volume(model, image, divisor: int):
    """Whole-volume prediction: pad to a multiple of ``divisor``, run, crop back."""
    pad = [(0, (-s) % divisor) for s in image.shape[:3]] + [(0, 0)]
    probabilities = model.predict(np.pad(image, pad)[None], verbose=0)[0]
    return probabilities[tuple(slice(0, s) for s in image.shape[:3])]


def _atomic_save(model, path: pathlib.Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Trains a V-Net and writes ``model.keras``, ``config.json`` and ``summary.json`` into
    ``config.workdir``. Returns the summary."""
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    dataset = find_cases(config.data_dir, config.layout)
    report = check_dataset(dataset)
    if not report.ok:
        raise ValueError(f"the data check found unusable cases:\n{report.summary()}")
    preprocess = PreprocessConfig(target_spacing_zyx=config.target_spacing_zyx)
    paths = preprocess_dataset(dataset.cases, preprocess, config.cache_dir)
    cases = [load_cached_case(p) for p in paths]
    n_val = max(1, int(round(len(cases) * config.validation_fraction))) if len(cases) > 1 else 0
    train_cases, val_cases = cases[: len(cases) - n_val], cases[len(cases) - n_val:]
    num_classes = (max(dataset.labels) + 1) if dataset.labels else int(max(c.label.max() for c in cases)) + 1
    (workdir / "config.json").write_text(json.dumps(
        {"train": dataclasses.asdict(config), "preprocess": preprocess.to_dict(),
         "num_classes": num_classes, "train_cases": [c.case_id for c in train_cases],
         "validation_cases": [c.case_id for c in val_cases]}, indent=2))

    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = build_vnet(input_channels=cases[0].image.shape[-1], num_classes=num_classes,
                       base_width=config.base_width, depth=config.depth,
                       kernel_size=config.kernel_size, normalization=config.normalization)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss=DiceCELoss(include_background=False))

    def batches():
        while True:
            picks = [train_cases[i] for i in rng.integers(len(train_cases), size=config.batch_size)]
            pairs = [sample_patch(c.image, c.label, config.patch_size_zyx, rng,
                                  rng.random() < config.foreground_fraction) for c in picks]
            yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]).astype(np.int32)

    log(f"training on {len(train_cases)} cases, validating on {len(val_cases)}; "
        f"{config.steps} steps of batch {config.batch_size}, patch {tuple(config.patch_size_zyx)}")
    start = time.perf_counter()
    chunk = min(50, config.steps)
    history = []
    for _ in range(max(1, config.steps // chunk)):
        result = model.fit(batches(), steps_per_epoch=chunk, epochs=1, verbose=0, shuffle=False)
        history.append(float(result.history["loss"][-1]))
        log(f"step {len(history) * chunk}/{config.steps}  loss {history[-1]:.4f}")
    seconds = time.perf_counter() - start
    _atomic_save(model, workdir / "model.keras")

    dice = []
    for case in val_cases:
        probabilities = predict_volume(model, case.image, required_divisor(config.depth))
        hard = keras.ops.one_hot(np.argmax(probabilities, -1), num_classes)
        dice.append(keras.ops.convert_to_numpy(dice_per_class(case.label[None], hard[None], smooth=0))[0])
    mean_dice = np.mean(dice, axis=0).tolist() if dice else []
    summary = {"steps": config.steps, "seconds": round(seconds, 1), "loss_history": history,
               "validation_dice_per_class": mean_dice, "workdir": str(workdir)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
