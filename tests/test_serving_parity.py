"""Serve exactly what is evaluated: for the preprocessing and inference settings of the
shipped flagfiles (the first with a weight average, served as "final") and an ensemble of
multi-channel runs, a tiny model is exported, and the SavedModel, loaded in a clean process
that imports only TensorFlow, must give evaluate.py's labels voxel for voxel and its
probabilities within 1e-5, on real hippocampus cases (and a left-atrium case for the
left-atrium recipe) and on synthetic anisotropic, reoriented ones. A second test holds the
graph's preprocessing to the training cache's (SimpleITK) on real cases."""

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import HIPPOCAMPUS, LEFT_ATRIUM, REPO, flagfile_config

# Every shipped flagfile's settings: hippocampus_paper's, hippocampus_ds' and la2018_paper's are
# combinations of these (the test checks it; la2018_paper's patch differs, and the others show
# sliding windows of several patch sizes), so their exports would repeat what these show.
FLAGFILES = ("demo", "hippocampus", "promise12_paper", "la2018")
TOLERANCE = 1e-5


def flagfile_settings(name, monkeypatch):
    """The (preprocess, inference, patch) that train.py builds from configs/<name>.flags."""
    config = flagfile_config(f"{name}.flags", monkeypatch)
    return config.preprocess, config.inference, config.patch_size_zyx


def _workdir(source, target, preprocess, inference, patch, channels=None, weights_from=None):
    """A copy of ``source``'s run with other settings (and, for ``channels``, untrained weights
    of that many input channels)."""
    from vnet_tf.model.checkpoint import save_checkpoint
    from vnet_tf.model.vnet import build_vnet
    from vnet_tf.inference.run_folder import run_model_config
    config = json.loads((source / "config.json").read_text())
    config["train"]["preprocess"] = preprocess.to_dict()
    config["train"]["inference"] = inference.to_dict()
    config["train"]["patch_size_zyx"] = list(patch)
    target.mkdir()
    if channels is not None:
        config["train"]["model"]["input_channels"] = channels
        model = build_vnet(run_model_config({"model": config["train"]["model"]}))
        save_checkpoint(target / "best.npz", {"model": model.variables}, {"step": 0, "best_score": 0})
    else:
        shutil.copy(source / "best.npz", target / "best.npz")
    (target / "config.json").write_text(json.dumps(config))
    return target


def _averaged_workdir(source, target, preprocess, inference, patch):
    """A run with a weight average whose average differs from its training weights."""
    from vnet_tf.model import averaging
    from vnet_tf.model.checkpoint import save_checkpoint
    from vnet_tf.inference.run_folder import restore_model
    work = _workdir(source, target, preprocess, inference, patch)
    config = json.loads((work / "config.json").read_text())
    config["train"]["weight_average"] = 0.99
    (work / "config.json").write_text(json.dumps(config))
    model, _ = restore_model(source)
    raw = [np.asarray(v) for v in model.variables]
    for v in model.variables:
        v.assign(np.asarray(v) * 0.9)
    save_checkpoint(work / "checkpoint.npz", {"model": [np.asarray(r) for r in raw], averaging.GROUP: model.variables},
                    {"step": 1, "best_score": 0})
    return work


def _synthetic_case(path, rng, channels=1):
    """An anisotropic scan with a non-identity (permuted, flipped) direction."""
    arrays = [(100 + 30 * rng.normal(size=(18, 30, 26))).astype(np.float32) for _ in range(channels)]
    for a in arrays:
        a[5:12, 8:20, 6:18] += 80.0
    image = sitk.GetImageFromArray(np.stack(arrays, -1) if channels > 1 else arrays[0], isVector=channels > 1)
    image.SetSpacing((0.8, 1.1, 2.4))
    image.SetOrigin((12.0, -30.0, 4.0))
    image.SetDirection((0, -1, 0, 1, 0, 0, 0, 0, -1))
    sitk.WriteImage(image, str(path))
    return path


CLEAN_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
jobs = json.load(open(sys.argv[1]))
models = {}
for job in jobs:
    model = models.setdefault(job["export"], tf.saved_model.load(job["export"])) if job["export"] not in models \
        else models[job["export"]]
    data = np.load(job["case"])
    inputs = dict(volume=tf.constant(data["volume"]), spacing=tf.constant(data["spacing"]),
                  direction=tf.constant(data["direction"]))
    full = model.signatures["predict_probabilities"](**inputs)
    plain = model.signatures["serving_default"](**inputs)
    np.savez(job["out"], labels=plain["labels"].numpy(), full_labels=full["labels"].numpy(),
             probabilities=full["probabilities"].numpy(), postprocess=plain["postprocess"].numpy())
assert not [m for m in sys.modules if m.startswith("vnet_tf")], "vnet_tf was imported"
"""


def test_the_saved_model_gives_evaluates_labels_and_probabilities(tiny_run, tmp_path, monkeypatch, rng):
    from vnet_tf.serving.client import apply_postprocess
    from vnet_tf.serving.exporter import export_run
    from vnet_tf.core.io import read_image
    from vnet_tf.inference.loading import load_segment
    from vnet_tf.inference.segmentation import predict_case, scan_arrays

    run, _ = tiny_run
    settings = {name: flagfile_settings(name, monkeypatch) for name in FLAGFILES}
    pre, inf, patch = settings["hippocampus"]
    shipped = sorted(path.stem for path in (REPO / "configs").glob("*.flags"))
    assert shipped == sorted(FLAGFILES + ("hippocampus_ds", "hippocampus_paper", "la2018_paper")), shipped
    la_pre, la_inf, _ = settings["la2018"]
    five_levels = (48, 80, 96)  # the paper's five levels need sides divisible by 16
    assert flagfile_settings("la2018_paper", monkeypatch) == (
        la_pre, dataclasses.replace(la_inf, mirror_axes=settings["demo"][1].mirror_axes, patch_size_zyx=five_levels),
        five_levels)
    assert flagfile_settings("hippocampus_ds", monkeypatch) == (pre, inf, patch)
    # The recipe's settings without test-time mirroring and post-processing, as the demo's.
    assert flagfile_settings("hippocampus_paper", monkeypatch) == (
        pre, dataclasses.replace(inf, mirror_axes=settings["demo"][1].mirror_axes,
                                 postprocess=settings["demo"][1].postprocess), patch)
    single = [_synthetic_case(tmp_path / f"synthetic{i}.nii.gz", rng) for i in range(2)]
    real = sorted((HIPPOCAMPUS / "imagesTr").glob("hippocampus_*.nii.gz"))[:1] if HIPPOCAMPUS.is_dir() else []
    multi = [_synthetic_case(tmp_path / "multi.nrrd", rng, channels=2)]
    anisotropic = pre.__class__(target_spacing_zyx=(1.7, 0.9, 1.1), normalization="zscore_foreground")
    configs = {name: ([_workdir(run, tmp_path / name, *settings[name])], "best", single + real)
               for name in FLAGFILES[1:]}
    if LEFT_ATRIUM.is_dir():  # the left-atrium recipe on a left-atrium scan (2.3 M voxels)
        configs["la2018"][2].append(sorted((LEFT_ATRIUM / "imagesTr").glob("*.nii.gz"))[0])
    # The first flagfile's settings with a weight average: the export serves the average ("final").
    configs[FLAGFILES[0]] = ([_averaged_workdir(run, tmp_path / FLAGFILES[0], *settings[FLAGFILES[0]])], "final",
                             single + real)
    # An ensemble of two two-channel runs (untrained, so their weights differ) with resampling.
    members = [_workdir(run, tmp_path / f"multi{i}", anisotropic, inf, patch, channels=2) for i in range(2)]
    configs["multichannel_ensemble"] = (members, "best", multi)

    jobs, expected = [], {}
    for name, (workdirs, which, cases) in configs.items():
        version = export_run(workdirs, tmp_path / "exports" / name, which=which)
        loaded = load_segment(workdirs, which)
        for i, case in enumerate(cases):
            images = [read_image(case)]
            prediction = predict_case(images, loaded.segment, loaded.inference.postprocess,
                                      loaded.inference.min_size, keep_probabilities=True)
            scan = scan_arrays(images)
            arrays = tmp_path / f"{name}_{i}.npz"
            np.savez(arrays, volume=scan.volume, spacing=scan.spacing_zyx, direction=scan.direction)
            jobs.append({"export": str(version), "case": str(arrays), "out": str(tmp_path / f"{name}_{i}_out.npz")})
            expected[jobs[-1]["out"]] = (name, case, prediction)
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    out = subprocess.run([sys.executable, "-c", CLEAN_PROCESS, str(tmp_path / "jobs.json")], cwd=tmp_path,
                         capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    postprocessed = set()
    for path, (name, case, prediction) in expected.items():
        served = np.load(path)
        where = f"{name} on {case.name}"
        assert served["labels"].shape == prediction.label.shape, where
        np.testing.assert_allclose(served["probabilities"], prediction.probabilities, atol=TOLERANCE, err_msg=where)
        np.testing.assert_array_equal(served["full_labels"], served["labels"], err_msg=where)
        labels = apply_postprocess(served["labels"], served["postprocess"].item().decode())
        np.testing.assert_array_equal(labels, prediction.label, err_msg=where)
        assert len(np.unique(labels)) > 1, where  # not a trivial all-background answer
        if not np.array_equal(labels, served["labels"]):
            postprocessed.add(name)
    assert postprocessed, "no case exercised the post-processing"


@pytest.mark.parametrize("target, clip", [((1.5, 1.0, 1.0), None), ((1.0, 0.8, 1.3), (1.0, 99.0))])
def test_the_graph_preprocesses_real_cases_as_the_training_cache(hippocampus_dir, target, clip):
    """The in-graph reorientation, resampling and normalisation against preprocess_case
    (SimpleITK), which built the cases the model trained on; moving the normalisation before
    the resampling fails this."""
    import tensorflow as tf
    from vnet_tf.inference.config import InferenceConfig
    from vnet_tf.inference.segmenter import Segmenter
    from vnet_tf.core.io import read_image
    from vnet_tf.data.preprocess import PreprocessConfig, preprocess_case
    from vnet_tf.inference.segmentation import scan_arrays
    preprocess = PreprocessConfig(target_spacing_zyx=target, clip_percentiles=clip)
    segmenter = Segmenter(lambda x, training=False: x, preprocess, InferenceConfig(), 1, 1)
    for path in sorted((hippocampus_dir / "imagesTr").glob("hippocampus_*.nii.gz"))[:4]:
        image = read_image(path)
        expected, _, _ = preprocess_case([image], None, preprocess)
        scan = scan_arrays([image])
        got = segmenter.graph_preprocessing.preprocess_volume(
            tf.constant(scan.volume), tf.constant(scan.spacing_zyx), tf.constant(scan.direction))[0].numpy()
        assert got.shape == expected.shape, path.name
        np.testing.assert_allclose(got, expected, atol=1e-4, err_msg=path.name)
