"""Synthetic volumes with known labels, for tests and the embedded demo dataset."""

from __future__ import annotations

from typing import Tuple

import numpy as np


def sphere_case(shape: Tuple[int, int, int], rng: np.random.Generator,
                radius_range: Tuple[float, float] = (0.15, 0.3), noise: float = 0.3,
                num_classes: int = 2) -> Tuple[np.ndarray, np.ndarray]:
    """One noisy image containing a sphere, and its label map.

    Args:
      shape: ``(depth, height, width)``.
      rng: the random generator (seeded by the caller).
      radius_range: sphere radius as a fraction of the smallest edge.
      noise: standard deviation of the Gaussian noise added to the image.
      num_classes: 2 gives a background / sphere label; 3 splits the sphere into two
        halves along the depth axis (labels 1 and 2), like a two-part structure.

    Returns:
      ``(image, label)``: float32 ``(D, H, W)`` with the sphere at about 1 over a
      background at about 0, and uint8 ``(D, H, W)`` labels in ``[0, num_classes)``.
    """
    if num_classes not in (2, 3):
        raise ValueError(f"num_classes must be 2 or 3, got {num_classes}")
    edge = min(shape)
    radius = rng.uniform(*radius_range) * edge
    center = [rng.uniform(radius + 1, s - radius - 1) for s in shape]
    grid = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, center)))
    inside = dist <= radius
    label = inside.astype(np.uint8)
    if num_classes == 3:
        label[inside & (grid[0] >= center[0])] = 2
    image = label.astype(np.float32) / (num_classes - 1)
    image += rng.normal(0.0, noise, size=shape).astype(np.float32)
    return image.astype(np.float32), label


def sphere_batch(batch: int, shape: Tuple[int, int, int], rng: np.random.Generator,
                 **kwargs) -> Tuple[np.ndarray, np.ndarray]:
    """``batch`` sphere cases stacked: images ``(B, D, H, W, 1)``, labels ``(B, D, H, W)``."""
    cases = [sphere_case(shape, rng, **kwargs) for _ in range(batch)]
    images = np.stack([c[0] for c in cases])[..., None]
    labels = np.stack([c[1] for c in cases])
    return images, labels
