"""The figures of an evaluation report (matplotlib, no display needed).

- :func:`case_figure`: three orthogonal slices through the centre of a case's reference
  structure, with the reference *filled* and the prediction *outlined*, one colour per
  label, and a legend saying which is which.
- :func:`metric_plot`: Dice and HD95 per label over the cases: box plots with every case as
  a point from :data:`MIN_CASES_FOR_BOXES` cases on, the points alone below that (a box of
  one or two values is a flat line that reads as a result).
"""

from __future__ import annotations

import math
import pathlib
from typing import List, Optional, Sequence

import numpy as np

from vnet_tf.core.labels import class_label

COLOURS = ("tab:red", "tab:blue", "tab:green", "tab:orange", "tab:purple", "tab:cyan")
MIN_CASES_FOR_BOXES = 5
VIEWS = ("axial (z)", "coronal (y)", "sagittal (x)")


def _pyplot():
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
    return plt


def case_figure(path: pathlib.Path, image: np.ndarray, reference: np.ndarray, prediction: np.ndarray,
                labels: Sequence[int], title: str, names: Optional[dict] = None) -> None:
    """Writes the slices of ``image`` (``(z, y, x)``) with ``reference`` filled and
    ``prediction`` outlined for each of ``labels`` (named as ``names``, the dataset's, says)."""
    from matplotlib.lines import Line2D  # pylint: disable=import-outside-toplevel
    from matplotlib.patches import Patch  # pylint: disable=import-outside-toplevel
    plt = _pyplot()
    foreground = np.argwhere(reference > 0)
    centre = foreground.mean(axis=0).round().astype(int) if len(foreground) else np.array(reference.shape) // 2
    colours = dict(zip(labels, COLOURS * (1 + len(labels) // len(COLOURS))))
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    for ax, axis, name in zip(axes, range(3), VIEWS):
        take = lambda a: np.take(a, centre[axis], axis=axis)  # noqa: E731
        ax.imshow(take(image), cmap="gray")
        for k, colour in colours.items():
            filled = np.ma.masked_where(take(reference) != k, np.ones(take(reference).shape))
            ax.imshow(filled, cmap=_single_colour(colour), alpha=0.45, vmin=0, vmax=1)
            outline = (take(prediction) == k).astype(float)
            if outline.any() and outline.min() == 0:
                ax.contour(outline, levels=[0.5], colors=colour, linewidths=1.2)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    handles = []
    for k, colour in colours.items():
        handles += [Patch(facecolor=colour, alpha=0.45, label=f"{class_label(k, names)} reference"),
                    Line2D([], [], color=colour, linewidth=1.2, label=f"{class_label(k, names)} prediction")]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=9)
    fig.subplots_adjust(bottom=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _single_colour(colour):
    from matplotlib.colors import ListedColormap  # pylint: disable=import-outside-toplevel
    return ListedColormap([colour])


def metric_plot(path: pathlib.Path, records: List[dict], labels: Sequence[int], names: Optional[dict] = None) -> str:
    """Writes Dice and HD95 per label over ``records`` (an evaluation's per-case records);
    returns ``"boxes"`` or ``"points"``, what it drew."""
    plt = _pyplot()
    kind = "boxes" if len(records) >= MIN_CASES_FOR_BOXES else "points"
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, metric in zip(axes, ("dice", "hd95")):
        data = [[r["labels"][str(k)][metric] for r in records if not math.isnan(r["labels"][str(k)][metric])]
                for k in labels]
        if kind == "boxes":
            ax.boxplot(data, showfliers=False)
        for i, values in enumerate(data, start=1):
            spread = np.linspace(-0.08, 0.08, len(values)) if len(values) > 1 else np.zeros(len(values))
            ax.plot(i + spread, values, "o", color="black", markersize=3, alpha=0.6)
        ax.set_xticks(range(1, len(labels) + 1), [class_label(k, names) for k in labels], fontsize=7)
        ax.set_xlim(0.5, len(labels) + 0.5)
        ax.set_ylim(0, 1.02) if metric == "dice" else ax.set_ylim(bottom=0)  # scales that do not magnify noise
        ax.set_title(("Dice" if metric == "dice" else "HD95 (mm)") + f", {len(records)} case(s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return kind
