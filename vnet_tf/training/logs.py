"""What a training run reports while it runs: a progress bar (loss, Dice, ETA) and
TensorBoard scalars and images."""

from __future__ import annotations

import pathlib
import time

import keras
import numpy as np
import tensorflow as tf


def overlay(image: np.ndarray, label: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """``(H, 3W, 3)`` uint8: the mid-slice (along z) of the image, with the reference and
    the prediction drawn over it in colour (one hue per class)."""
    z = image.shape[0] // 2
    gray = image[z].astype(np.float32)
    low, high = np.percentile(gray, (1, 99))
    gray = np.clip((gray - low) / max(high - low, 1e-6), 0, 1)
    base = np.stack([gray] * 3, axis=-1)
    palette = np.array([[0, 0, 0], [1, 0.2, 0.2], [0.2, 0.6, 1], [0.2, 1, 0.2], [1, 1, 0.2]], np.float32)

    def paint(mask):
        colours = palette[np.minimum(mask, len(palette) - 1)]
        alpha = (mask > 0)[..., None] * 0.5
        return base * (1 - alpha) + colours * alpha

    panel = np.concatenate([base, paint(label[z]), paint(prediction[z])], axis=1)
    return (panel * 255).astype(np.uint8)


class TrainingLogger:
    """Progress bar + TensorBoard writer of one run."""

    def __init__(self, log_dir: pathlib.Path, total_steps: int, start_step: int, show_progress: bool = True,
                 rate_every: int = 10):
        self.rate_every = rate_every  # steps between TensorBoard's steps/s and patches/s points
        self.writer = tf.summary.create_file_writer(str(log_dir))
        self.bar = keras.utils.Progbar(total_steps, stateful_metrics=["loss", "val_dice", "lr"],
                                       verbose=1 if show_progress else 0)
        self.start = start_step
        self.last_time, self.last_step = time.perf_counter(), start_step
        self.val_dice = None
        if start_step:
            self.bar.update(start_step)

    def step(self, step: int, loss: float, lr: float, batch_size: int) -> None:
        values = [("loss", loss), ("lr", lr)]
        if self.val_dice is not None:
            values.append(("val_dice", self.val_dice))
        self.bar.update(step, values)
        with self.writer.as_default(step=step):
            tf.summary.scalar("train/loss", loss)
            tf.summary.scalar("train/learning_rate", lr)
            if step % self.rate_every == 0:
                now = time.perf_counter()
                rate = (step - self.last_step) / max(now - self.last_time, 1e-9)
                tf.summary.scalar("train/steps_per_second", rate)
                tf.summary.scalar("train/patches_per_second", rate * batch_size)
                self.last_time, self.last_step = now, step

    def validation(self, step: int, dice_per_class: np.ndarray, example) -> None:
        self.val_dice = float(np.mean(dice_per_class[1:]))
        with self.writer.as_default(step=step):
            for cls, value in enumerate(dice_per_class):
                tf.summary.scalar(f"validation/dice_class_{cls}", float(value))
            tf.summary.scalar("validation/dice_foreground_mean", self.val_dice)
            if example is not None:
                tf.summary.image("validation/mid_slice_image_reference_prediction", overlay(*example)[None])
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
