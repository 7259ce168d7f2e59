"""Find the (image, label) cases of a dataset folder in the common layouts.

Layouts:

- ``msd``: Medical Segmentation Decathlon: ``dataset.json`` listing ``training`` pairs
  (``./imagesTr/x.nii.gz``, ``./labelsTr/x.nii.gz``); multi-modal images are 4D files,
  and ``modality`` / ``labels`` declare the channels and classes.
- ``nnunet``: ``imagesTr/<case>_0000.nii.gz``, ``<case>_0001.nii.gz`` ... (one file per
  channel) and ``labelsTr/<case>.nii.gz``.
- ``promise12``: ``Case00.mhd`` beside ``Case00_segmentation.mhd``.
- ``glob``: two patterns relative to the folder, each with exactly one ``*``, e.g.
  ``images/*.nii.gz`` and ``labels/*_seg.nii.gz``; the text matched by ``*`` is the case id
  that pairs them.

``auto`` picks the first layout whose marker is present, in the order above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
from typing import Dict, List, Optional, Tuple

from vnet_tf.core.errors import UserError
from vnet_tf.core.io import PathLike, case_stem, volume_suffix

LAYOUTS = ("auto", "msd", "nnunet", "promise12", "glob")
# The layouts a folder alone defines (``glob`` also needs two patterns): what a --layout flag names.
FOLDER_LAYOUTS = tuple(name for name in LAYOUTS if name != "glob")
_NNUNET_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclasses.dataclass(frozen=True)
class Case:
    """One case: its id, its image file(s) (one per channel, or one 4D file) and its label."""

    case_id: str
    images: Tuple[pathlib.Path, ...]
    label: Optional[pathlib.Path]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """The cases of a folder and what its index declares (``None`` where it declares nothing)."""

    root: pathlib.Path
    layout: str
    cases: Tuple[Case, ...]
    channels: Optional[int] = None
    labels: Optional[Dict[int, str]] = None
    modalities: Optional[Tuple[str, ...]] = None  # per channel, as the index names them ("CT", "T2", ...)


def _volume_files(folder: pathlib.Path) -> List[pathlib.Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and volume_suffix(p)
                  and not p.name.startswith("."))


def detect_layout(root: pathlib.Path) -> str:
    if (root / "dataset.json").is_file() and "training" in _load_json(root / "dataset.json"):
        return "msd"
    images = root / "imagesTr"
    if images.is_dir() and any(_NNUNET_CHANNEL.match(case_stem(p)) for p in _volume_files(images)):
        return "nnunet"
    if any(case_stem(p).endswith("_segmentation") for p in root.glob("*.mhd")):
        return "promise12"
    raise UserError(
        f"{root}: cannot tell the dataset layout: no dataset.json with a 'training' list "
        f"(msd), no imagesTr/<case>_0000.* files (nnunet), no *_segmentation.mhd files "
        f"(promise12); pass layout='glob' with image_glob and label_glob")


def _load_json(path: pathlib.Path) -> dict:
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON file ({err})") from err
    if not isinstance(index, dict):
        raise UserError(f"{path}: expected a JSON object, found {type(index).__name__}")
    return index


def _declared_labels(path: pathlib.Path, labels) -> Optional[Dict[int, str]]:
    """dataset.json's ``labels``: class number -> name; the numbers must be 0..K-1."""
    if not labels:
        return None
    if not isinstance(labels, dict):
        raise UserError(f"{path}: 'labels' must map class numbers to names, got {labels!r}")
    try:
        declared = {int(k): str(v) for k, v in labels.items()}
    except ValueError as err:
        bad = [k for k in labels if not str(k).strip().lstrip("-").isdigit()]
        raise UserError(f"{path}: 'labels' keys must be class numbers (\"0\", \"1\", ...), found {bad}") from err
    if sorted(declared) != list(range(len(declared))):
        raise UserError(f"{path}: 'labels' must number the classes 0..K-1 (0 = background), found {sorted(declared)}")
    return declared


def _listed(root: pathlib.Path, entry: str) -> pathlib.Path:
    """The absolute path of a file the index lists, as listed: ``..`` and ``.`` are folded but
    symbolic links are not followed, so that the case is named by the listed file, never by a
    link's target (the fold split hashes that name)."""
    return pathlib.Path(os.path.normpath(os.path.abspath(root / entry)))


def _msd(root: pathlib.Path) -> Dataset:
    index = _load_json(root / "dataset.json")
    if not isinstance(index.get("training"), list):
        raise UserError(f"{root / 'dataset.json'}: expected a 'training' list of image/label pairs, "
                        f"found {type(index.get('training')).__name__}")
    cases = []
    for i, entry in enumerate(index["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or \
                not isinstance(entry.get("label") or "", str):
            raise UserError(f"{root / 'dataset.json'}: training entry {i}: expected {{'image': PATH, 'label': PATH}}, found {entry!r}")
        image = _listed(root, entry["image"])
        label = _listed(root, entry["label"]) if entry.get("label") else None
        cases.append(Case(case_stem(image), (image,), label))
    labels = _declared_labels(root / "dataset.json", index.get("labels"))
    modality = index.get("modality")
    if modality is not None and not isinstance(modality, dict):
        raise UserError(f"{root / 'dataset.json'}: 'modality' must map channel numbers to names, got {modality!r}")
    channels = len(modality) if modality else None
    return Dataset(root, "msd", tuple(cases), channels, labels, _modalities(modality))


def _modalities(declared) -> Optional[Tuple[str, ...]]:
    """The channel names of dataset.json's ``modality`` (MSD, nnU-Net v1) or ``channel_names``
    (nnU-Net v2), in channel order; ``None`` where it names none."""
    if not isinstance(declared, dict) or not declared:
        return None
    try:
        return tuple(str(declared[k]) for k in sorted(declared, key=int))
    except ValueError:
        return None


def _nnunet(root: pathlib.Path) -> Dataset:
    groups: Dict[str, Dict[int, pathlib.Path]] = {}
    for path in _volume_files(root / "imagesTr"):
        match = _NNUNET_CHANNEL.match(case_stem(path))
        if match:
            groups.setdefault(match["case"], {})[int(match["channel"])] = path
    labels_dir = root / "labelsTr"
    label_files = {case_stem(p): p for p in _volume_files(labels_dir)} if labels_dir.is_dir() else {}
    cases = []
    for case_id, channels in sorted(groups.items()):
        expected = list(range(len(channels)))
        if sorted(channels) != expected:
            raise UserError(f"{root / 'imagesTr'}: case {case_id} has channel files "
                            f"{sorted(channels)}, expected {expected}")
        label = label_files.get(case_id, labels_dir / f"{case_id}{volume_suffix(channels[0])}")
        cases.append(Case(case_id, tuple(channels[c] for c in expected), label))
    channels = {len(c.images) for c in cases}
    index = _load_json(root / "dataset.json") if (root / "dataset.json").is_file() else {}
    modalities = _modalities(index.get("channel_names") or index.get("modality"))
    return Dataset(root, "nnunet", tuple(cases), channels.pop() if len(channels) == 1 else None,
                   modalities=modalities)


def _promise12(root: pathlib.Path) -> Dataset:
    cases = []
    for path in sorted(root.glob("*.mhd")):
        stem = case_stem(path)
        if stem.endswith("_segmentation"):
            continue
        cases.append(Case(stem, (path,), root / f"{stem}_segmentation.mhd"))
    return Dataset(root, "promise12", tuple(cases), 1)


def _star_regex(pattern: str) -> re.Pattern:
    if pattern.count("*") != 1:
        raise UserError(f"glob pattern {pattern!r} must contain exactly one '*' (the case id)")
    head, tail = pattern.split("*")
    return re.compile("^" + re.escape(head) + r"(?P<case>[^/]+?)" + re.escape(tail) + "$")


def _glob(root: pathlib.Path, image_glob: Optional[str], label_glob: Optional[str]) -> Dataset:
    if not image_glob:
        raise UserError("layout 'glob' needs image_glob (e.g. 'images/*.nii.gz')")
    image_re = _star_regex(image_glob)
    images = {}
    for path in sorted(root.glob(image_glob)):
        match = image_re.match(path.relative_to(root).as_posix())
        if match:
            images[match["case"]] = path
    labels = {}
    if label_glob:
        label_re = _star_regex(label_glob)
        for path in sorted(root.glob(label_glob)):
            match = label_re.match(path.relative_to(root).as_posix())
            if match:
                labels[match["case"]] = path
    cases = []
    for case_id, image in sorted(images.items()):
        if label_glob:
            label = labels.get(case_id, root / label_glob.replace("*", case_id))
        else:
            label = None
        cases.append(Case(case_id, (image,), label))
    return Dataset(root, "glob", tuple(cases))


def find_cases(data_dir: PathLike, layout: str = "auto", image_glob: Optional[str] = None,
               label_glob: Optional[str] = None) -> Dataset:
    """Lists the cases of ``data_dir``.

    A label that the layout expects but that is missing is still listed (its path does not
    exist), so that the data check can report it; nothing is read here.

    Raises:
      FileNotFoundError: ``data_dir`` is not a folder.
      ValueError: unknown or undetectable layout, bad glob patterns, or no case found.
    """
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"data_dir {root}: no such folder")
    if layout not in LAYOUTS:
        raise UserError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = "glob" if image_glob else detect_layout(root)
    if layout == "msd":
        dataset = _msd(root)
    elif layout == "nnunet":
        dataset = _nnunet(root)
    elif layout == "promise12":
        dataset = _promise12(root)
    else:
        dataset = _glob(root, image_glob, label_glob)
    if not dataset.cases:
        raise UserError(f"{root}: no case found with layout {layout!r}")
    ids = [c.case_id for c in dataset.cases]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise UserError(f"{root}: case ids occur more than once: {duplicates}")
    return dataset


def fold_of(case_id: str, num_folds: int) -> int:
    """The cross-validation fold of a case: a stable hash of its id modulo ``num_folds``, so
    a case keeps its fold when cases are added or removed."""
    digest = hashlib.sha256(case_id.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) % num_folds


def check_fold(fold: int, num_folds: int) -> None:
    """Raises ``ValueError`` unless ``fold`` is -1 (every case trains) or in ``[0, num_folds)``."""
    if num_folds < 2 or not -1 <= fold < num_folds:
        raise UserError(f"fold must be -1 (train on all cases) or in [0, num_folds) with num_folds >= 2, "
                        f"got fold={fold}, num_folds={num_folds}")


def split_cases(cases: List[Case], num_folds: int = 5, fold: int = 0) -> Tuple[List[Case], List[Case]]:
    """``(training, validation)``: the validation cases are those whose :func:`fold_of` is
    ``fold``; order is kept. ``fold=-1`` trains on every case (nnU-Net's "all"): no validation."""
    check_fold(fold, num_folds)
    if fold == -1:
        return list(cases), []
    validation = [c for c in cases if fold_of(c.case_id, num_folds) == fold]
    training = [c for c in cases if fold_of(c.case_id, num_folds) != fold]
    return training, validation
