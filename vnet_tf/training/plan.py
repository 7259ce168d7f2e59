"""A training run's settings derived from a dataset's fingerprint (``vnet-plan``).

The rules, each with the reason it gives (:func:`plan_run`):

- **Target spacing**: the median spacing per axis; none (keep) when every case already has it.
  Strongly anisotropic data (the coarsest median axis ``ANISOTROPY`` times the finest or more)
  keeps its coarse axis coarse: that axis gets the 10th percentile of its spacings rather
  than the median (as nnU-Net), so few cases are interpolated across thick slices.
- **Depth and patch**: the patch starts as the median case at the target spacing; the depth is
  the most levels (at most ``MAX_DEPTH``) whose bottom keeps ``MIN_BOTTOM`` voxels along the
  patch's shortest axis; each axis is rounded up to a multiple of ``2**(depth-1)``. While the
  estimated training memory exceeds the budget, the axis with the largest extent in mm loses
  one multiple (and the depth is chosen again).
- **With a time budget** (:class:`Timing`): the grid (the target spacing or coarser), the
  network's width and the run's length are chosen from step times measured on the machine
  (:mod:`vnet_tf.training.time_plan`: the rule); the patch and depth follow each grid as above.
- **Batch**: 2, the fewest patches for which the foreground oversampling and the Dice over a
  batch behave as in the recipe; a larger patch is preferred to a larger batch.
- **Normalisation**: CT (every channel named CT in the index): clip to the 0.5th-99.5th
  percentiles of the foreground intensities over the dataset, then subtract their mean and
  divide by their standard deviation (the same for every case, as HU are absolute). Other
  modalities: z-score each case.
- **Post-processing**: keep each class's largest component when every case has at most one
  component per class; none otherwise.
- **Augmentation**: the recipe's; for anisotropic data rotations only about the coarse axis and
  no elastic displacement along it.

Memory estimate: ``MEMORY_FACTOR`` x the bytes of every layer's output for a batch (float32),
shapes propagated symbolically (:func:`training_memory_gb`). Against ``bench/bench_train.py``
(BENCHMARKS.md): the recipe's peak resident memory exceeds the demo's by 2.7 x the difference
of their layer outputs; the factor rounds that up.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from vnet_tf.core.errors import UserError
from vnet_tf.core.settings import format_value, settings
from vnet_tf.data.fingerprint import Fingerprint, is_ct
from vnet_tf.training import time_plan
from vnet_tf.training.config import TrainConfig

ANISOTROPY = 3.0
MAX_DEPTH = 5
MIN_BOTTOM = 4
MEMORY_FACTOR = 3.0
BATCH_SIZE = 2
# The recipe's settings that the fingerprint does not change, by setting (configs/hippocampus.flags;
# tests/test_plan.py holds them equal).
RECIPE = {
    "num_folds": 5, "fold": 0, "model.variant": "paper", "model.base_width": 16, "model.kernel_size": 3,
    "model.activation": "prelu", "model.normalization": "instance", "loss": "dice_ce", "optimizer.name": "adam",
    "optimizer.learning_rate": 0.002, "optimizer.schedule": "poly", "optimizer.warmup_steps": 50,
    "foreground_fraction": 0.33, "steps": 20000, "time_budget_minutes": 115.0, "validation_every": 1000,
    "checkpoint_every": 100, "augment_on": "device", "augment.affine_probability": 0.2,
    "augment.scale_range": (0.85, 1.15), "augment.elastic_probability": 0.2, "augment.elastic_sigma": 2.0,
    "augment.elastic_mesh": (2, 2, 2), "augment.flip_axes": (0, 1, 2), "augment.flip_probability": 0.5,
    "augment.gamma_probability": 0.3, "augment.brightness_contrast_probability": 0.15,
    "augment.noise_probability": 0.1, "augment.noise_std": 0.1, "augment.blur_probability": 0.1,
    "inference.overlap": 0.5, "inference.mirror_axes": (0, 1, 2), "seed": 0,
}
RECIPE_ROTATION = 15.0
# Each setting's flag, from the one definition of the settings (TrainConfig's fields).
FLAG_OF = {row.path: row.flag.name for row in settings(TrainConfig) if row.flag is not None}


def flag_texts(values: Dict[str, Any]) -> Dict[str, str]:
    """``{setting path: value}`` as train.py's ``{flag: text}``."""
    unknown = sorted(set(values) - set(FLAG_OF))
    if unknown:
        raise ValueError(f"settings with no train.py flag: {unknown}")
    return {FLAG_OF[path]: format_value(value) for path, value in values.items()}


@dataclasses.dataclass
class Plan:
    """Groups of settings (``{dotted path: value}``, as TrainConfig names them), each with the
    reason for them; a group may hold none (a setting left at train.py's default, and why)."""
    groups: List[Tuple[str, Dict[str, Any]]] = dataclasses.field(default_factory=list)

    def set(self, reason: str, values: Optional[Dict[str, Any]] = None) -> None:
        flag_texts(values or {})  # every planned setting has a flag
        self.groups.append((reason, dict(values or {})))

    @property
    def flag_groups(self) -> List[Tuple[str, Dict[str, str]]]:
        """The groups as train.py's flags and their text."""
        return [(reason, flag_texts(values)) for reason, values in self.groups]

    @property
    def flags(self) -> Dict[str, str]:
        return {k: v for _, values in self.flag_groups for k, v in values.items()}


def _rounded(values, digits: int = 4) -> Tuple[float, ...]:
    """``values`` to ``digits`` significant digits, as the flagfile writes them."""
    return tuple(float(format(float(v), f".{digits}g")) for v in values)


def _fmt(values, fmt: str = ".4g") -> str:
    return ",".join(format(float(v), fmt) for v in values)


def target_spacing(spacings: np.ndarray) -> Tuple[Optional[np.ndarray], int, str]:
    """``(target or None, coarse axis or -1, reason)`` for the cases' ``spacings`` ``(n, 3)``."""
    median = np.median(spacings, axis=0)
    coarse = int(np.argmax(median))
    if median.max() >= ANISOTROPY * median.min():
        target = median.copy()
        target[coarse] = max(np.percentile(spacings[:, coarse], 10), np.delete(median, coarse).max())
        return target, coarse, (f"anisotropic (median {_fmt(median)} mm: axis {'zyx'[coarse]} is "
                                f"{median.max() / median.min():.1f}x the finest, >= {ANISOTROPY:g}x): the median "
                                f"spacing, with the coarse axis at the 10th percentile of its spacings")
    if np.allclose(spacings, median, rtol=0.01, atol=0):
        return None, -1, f"every case is at {_fmt(median)} mm (within 1 %): no resampling"
    return median, -1, f"the median spacing of the cases (they range from {_fmt(spacings.min(0))} to {_fmt(spacings.max(0))} mm)"


@functools.lru_cache(maxsize=None)
def _layer_probe(depth: int, channels: int, classes: int, base_width: int):
    import keras  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.networks import build_network  # pylint: disable=import-outside-toplevel
    from vnet_tf.model.config import VNetConfig  # pylint: disable=import-outside-toplevel
    model = build_network(VNetConfig(input_channels=channels, num_classes=classes, base_width=base_width, depth=depth,
                                     kernel_size=RECIPE["model.kernel_size"], convs_right=(1,) * (depth - 1),
                                     activation=RECIPE["model.activation"], normalization=RECIPE["model.normalization"])).model
    outputs = [layer.output for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    return keras.Model(model.inputs, outputs)


def _output_shapes(patch, depth: int, channels: int, classes: int, batch: int, base_width: int):
    """``[(layer, output shape)]`` of the planned network for ``batch`` patches."""
    import keras  # pylint: disable=import-outside-toplevel
    probe = _layer_probe(depth, channels, classes, base_width)
    specs = probe.compute_output_spec(keras.KerasTensor((batch, *map(int, patch), channels), dtype="float32"))
    layers = [layer for layer in probe.layers if not isinstance(layer, keras.layers.InputLayer)]
    return [(layer, tuple(spec.shape)) for layer, spec in zip(layers, specs)]


def training_memory_gb(patch, depth: int, channels: int, classes: int, batch: int = BATCH_SIZE,
                       base_width: int = RECIPE["model.base_width"]) -> float:
    """Estimated working memory of a training step (GiB): ``MEMORY_FACTOR`` x the float32
    bytes of every layer's output for ``batch`` patches of the planned network."""
    shapes = _output_shapes(patch, depth, channels, classes, batch, base_width)
    return MEMORY_FACTOR * 4 * sum(math.prod(shape) for _, shape in shapes) / 2**30


def multiply_adds(patch, depth: int, channels: int, classes: int, batch: int = BATCH_SIZE,
                  base_width: int = RECIPE["model.base_width"]) -> float:
    """The convolutions' multiply-adds of a forward pass over ``batch`` patches: each output
    voxel of a convolution costs its kernel's size; a transposed convolution's input voxel does."""
    import keras  # pylint: disable=import-outside-toplevel
    total = 0.0
    for layer, shape in _output_shapes(patch, depth, channels, classes, batch, base_width):
        if isinstance(layer, keras.layers.Conv3DTranspose):
            total += math.prod(shape[:-1]) / math.prod(layer.strides) * math.prod(layer.kernel.shape)
        elif isinstance(layer, keras.layers.Conv3D):
            total += math.prod(shape[:-1]) * math.prod(layer.kernel.shape)
    return total


def depth_for(shortest: float) -> int:
    """The most levels (2..MAX_DEPTH) whose bottom keeps MIN_BOTTOM voxels of ``shortest``."""
    halvings = int(math.floor(math.log2(max(shortest, MIN_BOTTOM) / MIN_BOTTOM)))
    return int(min(MAX_DEPTH, max(2, 1 + halvings)))


def patch_and_depth(median_shape, spacing, channels: int, classes: int, memory_gb: float,
                    base_width: int = RECIPE["model.base_width"]) -> Tuple[List[int], int, float, str]:
    """``(patch, depth, estimated GiB, reason)`` for the median case's shape at the target spacing."""
    patch = [float(s) for s in median_shape]
    shrunk = []
    while True:
        depth = depth_for(min(patch))
        step = 2 ** (depth - 1)
        rounded = [int(math.ceil(p / step) * step) for p in patch]
        memory = training_memory_gb(rounded, depth, channels, classes, base_width=base_width)
        if memory <= memory_gb:
            break
        axis = int(np.argmax(np.array(rounded) * np.asarray(spacing)))
        if rounded[axis] <= MIN_BOTTOM * step and depth == 2:
            raise UserError(f"--memory_gb: no patch of at least {MIN_BOTTOM * step} voxels a side fits {memory_gb:g} GiB "
                             f"(needs {memory:.2f}); raise the memory budget")
        shrunk.append("zyx"[axis])
        patch[axis] = rounded[axis] - step
    reason = (f"the median case at the target spacing ({_fmt(median_shape, '.0f')} voxels), each axis rounded up to "
              f"a multiple of 2**(depth-1) = {step}; depth {depth}: the most levels (at most {MAX_DEPTH}) that keep "
              f"{MIN_BOTTOM} voxels along the shortest axis at the bottom; estimated training memory {memory:.2f} GiB "
              f"of a {memory_gb:g} GiB budget")
    if shrunk:
        reason += f" (over budget at first: shortened along {', '.join(sorted(set(shrunk)))}, the longest in mm)"
    return rounded, depth, memory, reason


@dataclasses.dataclass
class Timing:
    """What the time-budget rule (:mod:`vnet_tf.training.time_plan`) measures on the machine:
    ``seconds_per_step(settings)`` of a run's settings (``{dotted path: value}``) and
    ``grid_dice(spacing)``, the labels' Dice kept on a grid (:mod:`vnet_tf.data.grid_cost`).
    ``vnet-plan`` measures them; the tests pass their own."""
    budget_minutes: float
    seconds_per_step: Callable[[Dict[str, Any]], float]
    grid_dice: Callable[[Tuple[float, ...]], float]


def plan_run(fp: Fingerprint, data_dir: str, layout: str, memory_gb: float = 8.0,
             workdir: Optional[str] = None, timing: Optional[Timing] = None) -> Plan:
    """The flags of a training run for the dataset of ``fp``, each with its reason; with
    ``timing``, the grid, patch, width and length fit its time budget on this machine."""
    plan = Plan()
    plan.set("the dataset", {"data_dir": data_dir, "layout": layout})
    plan.set("where the run writes", {"workdir": workdir or f"runs/{fp.name}", "cache_dir": ".cache"})
    target, coarse, why = target_spacing(fp.spacings)
    classes = len(fp.class_voxels)
    rotation, elastic, augment_why = _augmentation(coarse)
    common = {"augment.rotation_degrees": rotation, "augment.elastic_axes": elastic, **RECIPE}
    if timing is None:
        plan.set(why, {"preprocess.target_spacing_zyx": _rounded(target)} if target is not None else None)
        grid = fp.spacings if target is None else target
        shape = np.median(np.maximum(np.round(fp.sizes * fp.spacings / grid), 1), axis=0)
        patch, depth, _, why = patch_and_depth(shape, np.median(fp.spacings, 0) if target is None else target,
                                               fp.channels, classes, memory_gb)
        plan.set(why, {"patch_size_zyx": tuple(patch), "model.depth": depth, "model.convs_right": (1,) * (depth - 1)})
    else:
        _plan_for_time(plan, fp, target, why, classes, memory_gb, timing, common)
    plan.set(f"{BATCH_SIZE} patches a step: the fewest for which foreground oversampling and the batch's Dice behave "
             "as in the recipe; memory goes to a larger patch first", {"batch_size": BATCH_SIZE})
    _normalisation(plan, fp)
    single = all(max(c.components, default=0) <= 1 for c in fp.cases)
    plan.set("every case has at most one connected component of each class: keep each class's largest" if single else
             "some cases have several components of a class: keep them all",
             {"inference.postprocess": "largest" if single else "none"})
    plan.set(augment_why, {"augment.rotation_degrees": rotation, "augment.elastic_axes": elastic})
    planned = {path for _, values in plan.groups for path in values}
    recipe = {k: v for k, v in RECIPE.items() if k not in planned}
    plan.set("the recipe's training settings (configs/hippocampus.flags; docs/results/hippocampus.md: why each)", recipe)
    return plan


def _augmentation(coarse: int):
    """``(rotation, elastic axes, reason)``: the recipe's, about the coarse axis only where there is one."""
    if coarse < 0:
        return (RECIPE_ROTATION,) * 3, (True, True, True), "the recipe's (configs/hippocampus.flags)"
    return (tuple(RECIPE_ROTATION if a == coarse else 0.0 for a in range(3)), tuple(a != coarse for a in range(3)),
            f"the recipe's, but anisotropic: rotation only about axis {'zyx'[coarse]} (in the thin-slice plane) and no "
            f"elastic displacement along it")


def _plan_for_time(plan: Plan, fp: Fingerprint, target, why: str, classes: int, memory_gb: float, timing: Timing,
                   common: Dict[str, Any]) -> None:
    """Sets the grid, patch, depth and width (:func:`vnet_tf.training.time_plan.choose`) and the
    run's length."""
    base = np.median(fp.spacings, axis=0) if target is None else np.asarray(target)
    candidates = []
    grids = time_plan.grids_tried(_rounded(base), timing.grid_dice)
    for spacing in (grid for grid, dice in grids if time_plan.admissible(dice)):
        shape = np.median(np.maximum(np.round(fp.sizes * fp.spacings / np.asarray(spacing)), 1), axis=0)
        for width in time_plan.WIDTHS:
            patch, depth, memory, _ = patch_and_depth(shape, spacing, fp.channels, classes, memory_gb, width)
            candidates.append(time_plan.Candidate(
                tuple(spacing), tuple(patch), depth, width,
                multiply_adds(patch, depth, fp.channels, classes, base_width=width), memory))

    def settings_of(candidate):
        return {**common, **_network(candidate), "preprocess.target_spacing_zyx": candidate.spacing,
                "batch_size": BATCH_SIZE}

    choice = time_plan.choose(candidates, timing.budget_minutes, lambda c: timing.seconds_per_step(settings_of(c)))
    chosen = choice.chosen
    kept = "; ".join(f"{_fmt(g)} mm keeps {d:.4f}" for g, d in grids)
    if target is None and chosen.spacing == _rounded(base):
        plan.set(f"{why}; the finest grid (the labels' Dice kept on each grid tried: {kept})")
    else:
        start = f"every case is at {_fmt(base)} mm" if target is None else why
        plan.set(f"{start}; the grid the time budget chose, of those that keep {1 - time_plan.GRID_COST:g} of the "
                 f"labels' Dice ({kept})", {"preprocess.target_spacing_zyx": chosen.spacing})
    plan.set(f"{choice.reason}; estimated training memory {chosen.memory_gb:.2f} GiB of a {memory_gb:g} GiB budget",
             _network(chosen))
    length = {"steps": time_plan.step_cap(choice.steps), "time_budget_minutes": float(timing.budget_minutes),
              "validation_every": time_plan.validation_every(choice.steps)}
    plan.set(f"the time budget ends the run (about {choice.steps} steps planned; --steps is {time_plan.STEP_CAP}x that, "
             f"the most a faster day runs); about {time_plan.VALIDATIONS} validations", length)


def _network(candidate) -> Dict[str, Any]:
    return {"patch_size_zyx": tuple(candidate.patch), "model.depth": candidate.depth,
            "model.convs_right": (1,) * (candidate.depth - 1), "model.base_width": candidate.width}


def _normalisation(plan: Plan, fp: Fingerprint) -> None:
    if not is_ct(fp.modalities):
        named = ", ".join(m or "not named" for m in fp.modalities)
        plan.set(f"modality {named}: intensities are relative, so each case is z-scored on its own",
                 {"preprocess.normalization": "zscore"})
        return
    values = np.concatenate([fp.foreground(c) for c in range(fp.channels)]).astype(np.float64)
    if values.size == 0:
        raise UserError(f"{fp.name}: no foreground voxel in any label: the CT statistics need labelled foreground")
    low, high = np.percentile(values, [0.5, 99.5])
    clipped = np.clip(values, low, high)
    stats = [low, high, clipped.mean(), max(clipped.std(), 1e-6)]
    plan.set(f"CT: Hounsfield units mean the same in every case, so every case is clipped to the 0.5th-99.5th "
             f"percentiles of the foreground over the dataset ({low:.1f}, {high:.1f}) and scaled by the clipped "
             f"foreground's mean and std ({stats[2]:.1f}, {stats[3]:.1f})",
             {"preprocess.normalization": "ct", "preprocess.ct_statistics": _rounded(stats, 6)})
