"""export.py: versioned atomic SavedModel, signatures, session-based loading, warm-up,
parity with the library's inference, and the client."""

import http.server
import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, load_bench, subprocess_env


def _export(workdir, base, *args):
    return subprocess.run([sys.executable, "export.py", f"--workdir={workdir}", f"--export_base={base}", *args],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run, _ = tiny_run
    base = tmp_path_factory.mktemp("exports")
    out = _export(run, base)
    assert out.returncode == 0, out.stderr[-3000:]
    return run, base, base / "1"


def _library_inference(run, volume):
    from vnet_tf.exporter import restore_model
    from vnet_tf.inference import keras_predictor, predict_case
    from vnet_tf.training import run_configs
    model, config = restore_model(run)
    preprocess, inference = run_configs(config)
    prediction = predict_case([sitk.GetImageFromArray(volume)], keras_predictor(model), preprocess, inference,
                              keep_probabilities=True)
    return prediction.label, prediction.probabilities


def test_serving_default_in_a_clean_process_matches_the_library(exported, tmp_path, rng):
    run, _, version = exported
    volume = (100 + 30 * rng.normal(size=(21, 27, 19))).astype(np.float32)  # not the patch size, not /16
    np.save(tmp_path / "volume.npy", volume)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        f"m = tf.saved_model.load({str(version)!r})\n"
        f"v = np.load({str(tmp_path / 'volume.npy')!r})\n"
        "out = m.signatures['serving_default'](volume=tf.constant(v), spacing=tf.zeros((0,)))\n"
        f"np.save({str(tmp_path / 'labels.npy')!r}, out['labels'].numpy())\n"
        f"np.save({str(tmp_path / 'probs.npy')!r}, out['probabilities'].numpy())\n"
        "assert not [m for m in sys.modules if m.startswith('vnet_tf')], 'vnet_tf was imported'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    labels, probs = np.load(tmp_path / "labels.npy"), np.load(tmp_path / "probs.npy")
    ref_labels, ref_probs = _library_inference(run, volume)
    assert labels.dtype == np.int32 and labels.shape == volume.shape
    np.testing.assert_allclose(probs, ref_probs, atol=1e-4)
    np.testing.assert_array_equal(labels, ref_labels)


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, _, version = exported
    show = subprocess.run(["saved_model_cli", "show", "--dir", str(version), "--all"], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout
    for piece in ("signature_def['serving_default']", "signature_def['predict_patch']", "inputs['volume']",
                  "inputs['spacing']", "outputs['labels']", "outputs['probabilities']", "inputs['patches']",
                  "DT_INT32"):
        assert piece in text, piece
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(18, 23, 17)).astype(np.float32))
    np.save(tmp_path / "s.npy", np.zeros((0,), np.float32))
    run = subprocess.run(["saved_model_cli", "run", "--dir", str(version), "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"volume={tmp_path / 'v.npy'};spacing={tmp_path / 's.npy'}",
                          "--outdir", str(tmp_path / "out")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert np.load(tmp_path / "out" / "labels.npy").shape == (18, 23, 17)


def test_one_copy_of_the_weights(tiny_run, tmp_path):
    """The variables folder holds the weights once. A width-8 copy of the tiny run (untrained
    weights) keeps the fixed ~10 KB file overhead small against the 5 % tolerance."""
    from vnet_tf.checkpoint import save_checkpoint
    from vnet_tf.exporter import export_run
    from vnet_tf.model import VNetConfig, build_vnet
    run, _ = tiny_run
    config = json.loads((run / "config.json").read_text())
    config["model"]["base_width"] = 8
    workdir = tmp_path / "wide"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
    model = build_vnet(VNetConfig(**fields))
    save_checkpoint(workdir / "best.npz", {"model": model.variables}, {"step": 0, "best_score": 0})
    version = export_run(workdir, tmp_path / "base")
    weight_bytes = sum(np.asarray(v).nbytes for v in model.variables)
    stored = sum(p.stat().st_size for p in (version / "variables").iterdir())
    assert abs(stored - weight_bytes) / weight_bytes < 0.05, (stored, weight_bytes)


def test_warmup_record_is_a_prediction_log_that_runs(exported):
    import tensorflow as tf
    from tensorflow_serving.apis import prediction_log_pb2
    _, _, version = exported
    records = list(tf.data.TFRecordDataset(str(version / "assets.extra" / "tf_serving_warmup_requests")))
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0].numpy())
    request = log.predict_log.request
    assert request.model_spec.signature_name == "serving_default"
    inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    out = tf.saved_model.load(str(version)).signatures["serving_default"](**inputs)
    assert out["labels"].shape == inputs["volume"].shape


def test_wrong_rank_or_channels_names_the_input(exported):
    import tensorflow as tf
    _, _, version = exported
    serve = tf.saved_model.load(str(version)).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="input volume"):
        serve(volume=tf.zeros((4, 4)), spacing=tf.zeros((0,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="input volume must have 1 channel"):
        serve(volume=tf.zeros((8, 8, 8, 2)), spacing=tf.zeros((0,)))
    with pytest.raises(tf.errors.InvalidArgumentError, match="float"):
        serve(volume=tf.zeros((8, 8, 8), tf.int32), spacing=tf.zeros((0,)))
    from vnet_tf.client import check_volume
    with pytest.raises(ValueError, match="input volume.*dtype"):
        check_volume(np.full((2, 2, 2), "a"))
    with pytest.raises(ValueError, match="input volume.*shape"):
        check_volume(np.zeros((3, 3)))


def test_versions_and_killed_export(tiny_run, tmp_path):
    run, _ = tiny_run
    base = tmp_path / "base"
    proc = subprocess.Popen([sys.executable, "export.py", f"--workdir={run}", f"--export_base={base}"], cwd=REPO,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(base.glob(".tmp-*/model")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not [p for p in base.iterdir() if p.name.isdigit()], list(base.iterdir())
    for expected in ("1", "2"):
        out = _export(run, base)
        assert out.returncode == 0, out.stderr[-2000:]
        assert (base / expected / "saved_model.pb").is_file()
    out = _export(run, base, "--version=2")
    assert out.returncode != 0 and "exists" in out.stderr


class _FakeServing(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST predict call with the SavedModel (for the client test)."""
    signature = None

    def do_POST(self):  # noqa: N802
        import tensorflow as tf
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        inputs = body["inputs"]
        out = self.signature(volume=tf.constant(inputs["volume"], tf.float32),
                             spacing=tf.constant(inputs["spacing"], tf.float32))
        data = json.dumps({"outputs": {"labels": out["labels"].numpy().tolist()}}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_client_rest_round_trip_keeps_the_geometry(exported, tmp_path, rng):
    import tensorflow as tf
    from vnet_tf.client import segment_file
    _, _, version = exported
    _FakeServing.signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeServing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        image = sitk.GetImageFromArray((100 + 30 * rng.normal(size=(14, 18, 15))).astype(np.float32))
        image.SetSpacing((1.0, 1.0, 1.0))
        image.SetOrigin((3.0, -4.0, 5.0))
        image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # RAS: reoriented to LPS and back
        sitk.WriteImage(image, str(tmp_path / "scan.nii.gz"))
        segment_file(str(tmp_path / "scan.nii.gz"), str(tmp_path / "seg.nii.gz"),
                     f"127.0.0.1:{server.server_address[1]}", "vnet")
    finally:
        server.shutdown()
    seg = sitk.ReadImage(str(tmp_path / "seg.nii.gz"))
    scan = sitk.ReadImage(str(tmp_path / "scan.nii.gz"))
    assert seg.GetSize() == scan.GetSize() and seg.GetDirection() == scan.GetDirection()
    assert np.allclose(seg.GetOrigin(), scan.GetOrigin()) and seg.GetSpacing() == scan.GetSpacing()
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


def test_evaluate_accepts_an_exported_saved_model(exported, tmp_path):
    import csv
    run, _, version = exported
    data = run.parent / "cache" / "demo_data_6"
    scores = {}
    for name, model in (("workdir", run), ("saved_model", version)):
        out = subprocess.run([sys.executable, "evaluate.py", f"--model={model}", f"--data_dir={data}",
                              f"--output_dir={tmp_path / name}", "--fold=0", "--num_folds=3", "--figures=false"],
                             cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        scores[name] = {(r["case_id"], r["label"]): float(r["dice"]) for r in csv.DictReader(open(tmp_path / name / "metrics.csv"))}
    assert scores["workdir"].keys() == scores["saved_model"].keys() and scores["workdir"]
    for key, value in scores["workdir"].items():
        assert abs(value - scores["saved_model"][key]) < 1e-3, key
    # The export keeps the training cases, so evaluate.py can warn on a SavedModel too.
    exported_run = json.loads((version / "assets.extra" / "vnet_tf_run.json").read_text())
    assert exported_run["train_cases"] == json.loads((run / "config.json").read_text())["train_cases"] != []


def _untrained_twin(run, target, **model_changes):
    """A copy of the run's workdir whose best.npz holds other (untrained) weights."""
    from vnet_tf.checkpoint import save_checkpoint
    from vnet_tf.model import VNetConfig, build_vnet
    config = json.loads((run / "config.json").read_text())
    config["model"].update(model_changes)
    config["train_cases"] = config["train_cases"][:1] + ["extra_case"]
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["model"].items()}
    model = build_vnet(VNetConfig(**fields))
    save_checkpoint(target / "best.npz", {"model": model.variables}, {"step": 0, "best_score": 0})
    return target


def test_an_ensemble_exports_as_one_model_serving_the_mean(tiny_run, tmp_path, rng):
    import tensorflow as tf
    from vnet_tf.exporter import export_run, restore_model
    run, _ = tiny_run
    twin = _untrained_twin(run, tmp_path / "twin")
    version = export_run([run, twin], tmp_path / "base")
    served = tf.saved_model.load(str(version)).signatures["predict_patch"]
    config = json.loads((run / "config.json").read_text())
    patches = rng.normal(size=(2, *config["train"]["patch_size_zyx"], 1)).astype(np.float32)
    got = served(patches=tf.constant(patches))["probabilities"].numpy()
    members = [np.asarray(restore_model(w)[0](patches, training=False)) for w in (run, twin)]
    assert np.abs(members[0] - members[1]).max() > 1e-3  # the members differ, so the mean is a real test
    np.testing.assert_allclose(got, (members[0] + members[1]) / 2, atol=1e-5)
    exported_run = json.loads((version / "assets.extra" / "vnet_tf_run.json").read_text())
    assert exported_run["workdir"] == [str(run.resolve()), str(twin.resolve())]
    assert exported_run["train_cases"] == config["train_cases"] + ["extra_case"]


def test_an_exported_ensemble_segments_a_scan_as_its_members_mean(tiny_run, tmp_path, rng):
    """bench/check_ensemble_export.py: serving_default (sliding window, mirroring) of an ensemble
    against the library's inference of each member, averaged; one member alone must differ."""
    from vnet_tf.exporter import export_run
    run, _ = tiny_run
    twin = _untrained_twin(run, tmp_path / "twin")
    version = export_run([run, twin], tmp_path / "base")
    case = tmp_path / "scan.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray((100 + 30 * rng.normal(size=(21, 27, 19))).astype(np.float32)), str(case))
    check = load_bench("check_ensemble_export").check
    both = check(version, case, [run, twin], which="best")
    assert both["shape"] == (21, 27, 19) and both["voxels"] == 21 * 27 * 19
    assert both["max_probability_difference"] < 1e-4 and both["labels_differing"] == 0
    assert check(version, case, [run], which="best")["max_probability_difference"] > 1e-3


def test_an_ensemble_of_different_patch_sizes_is_refused_before_writing(tiny_run, tmp_path):
    run, _ = tiny_run
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["train"]["patch_size_zyx"] = [p + 8 for p in config["train"]["patch_size_zyx"]]
    (other / "config.json").write_text(json.dumps(config))
    (other / "best.npz").write_bytes((run / "best.npz").read_bytes())
    base = tmp_path / "base"
    out = subprocess.run([sys.executable, "export.py", f"--workdir={run},{other}", f"--export_base={base}"],
                         cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and f"{other} cannot be ensembled with {run}: its patch size differs" in out.stderr
    assert "Traceback" not in out.stderr and not base.exists()
