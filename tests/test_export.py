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

from conftest import REPO, run_command, subprocess_env

# One worker runs the module: its tests share the module's export, made once.
pytestmark = pytest.mark.xdist_group("export")


def _export(workdir, base, *args):
    return run_command("export", f"--workdir={workdir}", f"--export_base={base}", *args)


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    run, _ = tiny_run
    base = tmp_path_factory.mktemp("exports")
    out = _export(run, base)
    assert out.returncode == 0, out.stderr[-3000:]
    return run, base, base / "1"


def _request_files(tmp_path, volume, spacing=(1.0, 1.0, 1.0), direction=tuple(np.eye(3).ravel())):
    files = {}
    for name, value in (("volume", volume), ("spacing", spacing), ("direction", direction)):
        files[name] = tmp_path / f"{name}.npy"
        np.save(files[name], np.asarray(value, np.float32))
    return ";".join(f"{k}={v}" for k, v in files.items())


def test_saved_model_cli_show_and_run(exported, tmp_path):
    _, _, version = exported
    show = subprocess.run(["saved_model_cli", "show", "--dir", str(version), "--all"], capture_output=True, text=True, encoding="utf-8")
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout
    for piece in ("signature_def['serving_default']", "signature_def['predict_probabilities']",
                  "signature_def['predict_patch']", "inputs['volume']", "inputs['spacing']", "inputs['direction']",
                  "outputs['labels']", "outputs['probabilities']", "outputs['postprocess']", "inputs['patches']",
                  "DT_INT32", "DT_STRING"):
        assert piece in text, piece
    default = text[text.index("signature_def['serving_default']"):]
    default = default[:default.index("Method name")]
    assert "outputs['probabilities']" not in default  # labels-only responses by default
    run = lambda inputs: subprocess.run(  # noqa: E731
        ["saved_model_cli", "run", "--dir", str(version), "--tag_set", "serve", "--signature_def", "serving_default",
         "--inputs", inputs, "--outdir", str(tmp_path / "out"), "--overwrite"], capture_output=True, text=True, encoding="utf-8",
        timeout=600)
    good = run(_request_files(tmp_path, np.random.default_rng(0).normal(size=(18, 23, 17))))
    assert good.returncode == 0, good.stderr[-3000:]
    assert np.load(tmp_path / "out" / "labels.npy").shape == (18, 23, 17)


def test_one_copy_of_the_weights(tiny_run, tmp_path):
    """The variables folder holds the weights once. A width-8 copy of the tiny run (untrained
    weights) keeps the fixed ~10 KB file overhead small against the 5 % tolerance."""
    from vnet_tf.model.checkpoint import save_checkpoint
    from vnet_tf.serving.exporter import export_run
    from vnet_tf.model.vnet import VNetConfig, build_vnet
    run, _ = tiny_run
    config = json.loads((run / "config.json").read_text())
    config["train"]["model"]["base_width"] = 8
    workdir = tmp_path / "wide"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps(config))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["train"]["model"].items()}
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
    assert sorted(inputs) == ["direction", "spacing", "volume"]
    out = tf.saved_model.load(str(version)).signatures["serving_default"](**inputs)
    assert out["labels"].shape == inputs["volume"].shape


# The serving contract: each bad request, and the words its INVALID_ARGUMENT error must hold.
# (volume shape or array, spacing, direction, export, expected text)
_EYE = tuple(np.eye(3).ravel())
BAD_REQUESTS = {
    "nan_voxel": ("nan", (1, 1, 1), _EYE, "plain", "input volume: expected finite values; found"),
    "inf_voxel": ("inf", (1, 1, 1), _EYE, "plain", "input volume: expected finite values; found"),
    "spacing_zero": ((12, 13, 14), (0, 1, 1), _EYE, "plain", "input spacing: expected 3 positive finite values"),
    "spacing_negative": ((12, 13, 14), (1, -1, 1), _EYE, "plain", "input spacing: expected 3 positive finite values"),
    "spacing_nan": ((12, 13, 14), (1, float("nan"), 1), _EYE, "plain", "input spacing: expected 3 positive finite values"),
    "spacing_length": ((12, 13, 14), (1, 1), _EYE, "plain", "input spacing: expected 3 values (mm, in z, y, x order)"),
    "direction_length": ((12, 13, 14), (1, 1, 1), (1, 0, 0, 1), "plain", "input direction: expected 9 values"),
    "direction_degenerate": ((12, 13, 14), (1, 1, 1), (1, 0, 0, 1, 0, 0, 0, 0, 1), "plain",
                             "input direction: expected the 9 direction cosines of a scan"),
    "direction_not_unit": ((12, 13, 14), (1, 1, 1), tuple(2 * np.eye(3).ravel()), "plain",
                           "input direction: expected the 9 direction cosines of a scan"),
    "direction_sheared": ((12, 13, 14), (1, 1, 1), (1, np.cos(np.radians(53)), 0, 0, np.sin(np.radians(53)), 0, 0, 0, 1),
                          "plain", "input direction: expected the 9 direction cosines of a scan (orthonormal"),
    "rank_2": ((12, 13), (1, 1, 1), _EYE, "plain", "input volume: expected [D,H,W], [D,H,W,C] or [B,D,H,W,C]"),
    "rank_6": ((1, 1, 12, 13, 14, 1), (1, 1, 1), _EYE, "plain", "input volume: expected [D,H,W], [D,H,W,C] or"),
    "channels": ((12, 13, 14, 2), (1, 1, 1), _EYE, "plain", "input volume: expected 1 channel(s) on the last axis"),
    "too_small": ((3, 3, 3), (1, 1, 1), _EYE, "plain", "input volume: expected at least 4 voxels along each spatial axis"),
    "empty": ((0, 13, 14), (1, 1, 1), _EYE, "plain", "input volume: expected at least 4 voxels along each spatial axis"),
    "too_large_after_resampling": ((20, 20, 20), (1000, 1000, 1000), _EYE, "resampled",
                                   "input volume: at the spacing of the run it would hold more than the limit of this model,"),
    "spacing_3e9_after_resampling": ((50, 34, 34), (1, 3e9, 1), _EYE, "resampled",
                                     "input volume: at the spacing of the run it would hold more than the limit"),
    "spacing_1e10_after_resampling": ((20, 20, 20), (1e10, 1e10, 1e10), _EYE, "resampled",
                                      "input volume: at the spacing of the run it would hold more than the limit"),
    "too_small_after_resampling": ((20, 20, 20), (0.01, 0.01, 0.01), _EYE, "resampled",
                                   "input volume: at the spacing of the run it would be under 4 voxels along an axis"),
}

_CONTRACT_PROCESS = """
import json, sys
import numpy as np
import tensorflow as tf
cases = json.load(open(sys.argv[1]))
out, loaded, sessions = {}, {}, {}
for name, case in cases.items():
    data = np.load(case["inputs"])
    inputs = {k: data[k] for k in ("volume", "spacing", "direction")}
    export = case["export"]
    if export not in loaded:  # the object-based loader (tf.saved_model.load)
        loaded[export] = tf.saved_model.load(export).signatures["serving_default"]
        # the session-based loader that TF Serving and saved_model_cli use
        session = tf.compat.v1.Session(graph=tf.Graph())
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], export)
        sessions[export] = (session, meta.signature_def["serving_default"])
    result = {}
    try:
        loaded[export](**{k: tf.constant(v) for k, v in inputs.items()})
        result["loaded"] = "no error"
    except tf.errors.InvalidArgumentError as err:
        result["loaded"] = err.message
    session, signature = sessions[export]
    try:
        session.run(signature.outputs["labels"].name, {signature.inputs[k].name: v for k, v in inputs.items()})
        result["session"] = "no error"
    except tf.errors.InvalidArgumentError as err:
        result["session"] = err.message
    out[name] = result
json.dump(out, open(sys.argv[2], "w"))
assert not [m for m in sys.modules if m.startswith("vnet_tf")], "vnet_tf was imported"
"""


def test_every_bad_request_is_refused_naming_the_input(exported, tmp_path):
    """Through tf.saved_model.load and through the session-based loader (TF Serving's and
    saved_model_cli's path), in a clean process that imports only TensorFlow."""
    from vnet_tf.serving.exporter import export_run
    run, _, version = exported
    config = json.loads((run / "config.json").read_text())
    config["train"]["preprocess"]["target_spacing_zyx"] = [1.5, 1.0, 1.0]
    resampled = tmp_path / "resampled"
    resampled.mkdir()
    (resampled / "config.json").write_text(json.dumps(config))
    (resampled / "best.npz").write_bytes((run / "best.npz").read_bytes())
    exports = {"plain": str(version), "resampled": str(export_run(resampled, tmp_path / "base"))}
    cases = {}
    for name, (shape, spacing, direction, export, _) in BAD_REQUESTS.items():
        if isinstance(shape, str):
            volume = np.zeros((12, 13, 14), np.float32)
            volume[3, 4, 5] = float(shape)
        else:
            volume = np.zeros(shape, np.float32)
        np.savez(tmp_path / f"{name}.npz", volume=volume, spacing=np.asarray(spacing, np.float32),
                 direction=np.asarray(direction, np.float32))
        cases[name] = {"inputs": str(tmp_path / f"{name}.npz"), "export": exports[export]}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = subprocess.run([sys.executable, "-c", _CONTRACT_PROCESS, str(tmp_path / "cases.json"),
                          str(tmp_path / "errors.json")], cwd=tmp_path, capture_output=True, text=True, encoding="utf-8", timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    errors = json.loads((tmp_path / "errors.json").read_text())
    for name, (*_, expected) in BAD_REQUESTS.items():
        for path in ("loaded", "session"):
            assert expected in errors[name][path], (name, path, errors[name][path][:500])


def test_the_client_refuses_what_it_cannot_send():
    from vnet_tf.serving.client import check_request
    good = dict(volume=np.zeros((4, 5, 6)), spacing_zyx=(1, 1, 1), direction=_EYE)
    for change, words in ((dict(volume=np.full((2, 2, 2), "a")), "input volume: expected numbers"),
                          (dict(volume=np.zeros((3, 3))), "input volume: expected [D,H,W]"),
                          (dict(volume=np.full((4, 4, 4), np.nan)), "input volume: expected finite values"),
                          (dict(spacing_zyx=(1, 0, 1)), "input spacing: expected 3 positive finite values"),
                          (dict(direction=None), "input direction: expected the scan's 9 direction cosines")):
        with pytest.raises(ValueError) as err:
            check_request(**{**good, **change})
        assert words in str(err.value)
    assert sorted(check_request(**good)) == ["direction", "spacing", "volume"]


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
    from vnet_tf.serving.exporter import export_run, next_version
    assert export_run(run, base) == base / "1"
    assert (base / "1" / "saved_model.pb").is_file()
    with pytest.raises(ValueError, match="exists; pick another version"):
        export_run(run, base, version=1)
    (base / "7").mkdir()
    (base / "10a").mkdir()  # not a version
    assert next_version(base) == 8


class _FakeRest(http.server.BaseHTTPRequestHandler):
    """Answers TF Serving's REST predict call with the SavedModel, errors as TF Serving does
    (HTTP 400, a JSON body with the message)."""
    signature = None
    requests = []

    def do_POST(self):  # noqa: N802
        import tensorflow as tf
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append(body)
        inputs = {k: tf.constant(v, tf.float32) for k, v in body["inputs"].items()}
        try:
            out = self.signature(**inputs)
        except tf.errors.InvalidArgumentError as err:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(json.dumps({"error": err.message}).encode())
            return
        data = json.dumps({"outputs": {"labels": out["labels"].numpy().tolist(),
                                       "postprocess": out["postprocess"].numpy().decode()}}).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def _scan(path, rng, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)):
    image = sitk.GetImageFromArray((100 + 30 * rng.normal(size=(14, 18, 15))).astype(np.float32))
    image.SetSpacing((1.0, 1.2, 0.9))
    image.SetOrigin((3.0, -4.0, 5.0))
    image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def test_client_rest_round_trip_keeps_the_geometry_and_surfaces_errors(exported, tmp_path, rng):
    import tensorflow as tf
    from vnet_tf.serving.client import ServingError, predict_rest, segment_file
    from vnet_tf.inference.loading import load_segment
    from vnet_tf.inference.segmentation import predict_case
    run, _, version = exported
    _FakeRest.signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    server = http.server.HTTPServer(("127.0.0.1", 0), _FakeRest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    address = f"127.0.0.1:{server.server_address[1]}"
    try:
        scan = _scan(tmp_path / "scan.nii.gz", rng)  # RAS: the served graph reorients to LPS and back
        segment_file(str(scan), str(tmp_path / "seg.nii.gz"), address, "vnet")
        with pytest.raises(ServingError) as err:
            predict_rest(address, "vnet", np.zeros((3, 3, 3)), (1, 1, 1), _EYE)
        # The deployment guide's curl path: the request body written by the client, posted as it is.
        written = run_command("client", "--scan", scan, "--request_json", tmp_path / "request.json")
        assert written.returncode == 0, written.stderr[-3000:]
        import urllib.request
        posted = urllib.request.urlopen(urllib.request.Request(
            f"http://{address}/v1/models/vnet:predict", data=(tmp_path / "request.json").read_bytes(),
            headers={"Content-Type": "application/json"}), timeout=600)
        curl_labels = np.asarray(json.loads(posted.read())["outputs"]["labels"])
    finally:
        server.shutdown()
    assert "HTTP 400" in str(err.value)
    assert "input volume: expected at least 4 voxels along each spatial axis" in str(err.value)
    assert sorted(_FakeRest.requests[0]["inputs"]) == ["direction", "spacing", "volume"]
    seg, image = sitk.ReadImage(str(tmp_path / "seg.nii.gz")), sitk.ReadImage(str(scan))
    assert seg.GetSize() == image.GetSize() and seg.GetDirection() == image.GetDirection()
    assert np.allclose(seg.GetOrigin(), image.GetOrigin()) and seg.GetSpacing() == image.GetSpacing()
    loaded = load_segment([run])
    expected = predict_case([image], loaded.segment, loaded.inference.postprocess, loaded.inference.min_size)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), expected.label)  # what evaluate.py writes
    assert curl_labels.shape == expected.label.shape


def test_client_grpc_asks_only_for_labels_and_surfaces_errors(exported, rng, tmp_path):
    from concurrent import futures
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    from vnet_tf.serving.client import ServingError, predict_grpc, segment_scan
    from vnet_tf.core.io import read_image
    from vnet_tf.inference.segmentation import scan_arrays
    _, _, version = exported
    signature = tf.saved_model.load(str(version)).signatures["serving_default"]
    filters = []

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):  # noqa: N802
            filters.append(list(request.output_filter))
            inputs = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
            try:
                out = signature(**inputs)
            except tf.errors.InvalidArgumentError as err:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, err.message)
            response = predict_pb2.PredictResponse()
            for name in request.output_filter or out:
                response.outputs[name].CopyFrom(tf.make_tensor_proto(out[name].numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        scan = scan_arrays([read_image(_scan(tmp_path / "scan.nii.gz", rng))])
        labels = segment_scan(scan, f"127.0.0.1:{port}", "vnet", "grpc")
        with pytest.raises(ServingError) as err:
            predict_grpc(f"127.0.0.1:{port}", "vnet", np.zeros((8, 8, 8)), (1, 1, 1), (1, 0, 0, 1, 0, 0, 0, 0, 1))
    finally:
        server.stop(None)
    assert labels.shape == scan.volume.shape[:3]
    assert filters[0] == ["labels", "postprocess"]
    assert "INVALID_ARGUMENT" in str(err.value) and "input direction: expected the 9 direction cosines" in str(err.value)


def test_evaluate_accepts_an_exported_saved_model(exported, tmp_path):
    import csv
    run, _, version = exported
    data = run.parent / "cache" / "demo_data_6"
    scores = {}
    for name, model in (("workdir", run), ("saved_model", version)):
        out = run_command("evaluate", f"--model={model}", f"--data_dir={data}", f"--output_dir={tmp_path / name}",
                          "--fold=0", "--num_folds=3", "--figures=false")
        assert out.returncode == 0, out.stderr[-3000:]
        scores[name] = {(r["case_id"], r["label"]): float(r["dice"]) for r in csv.DictReader(open(tmp_path / name / "metrics.csv"))}
    assert scores["workdir"].keys() == scores["saved_model"].keys() and scores["workdir"]
    for key, value in scores["workdir"].items():
        assert value == scores["saved_model"][key], key  # the same graph
    # The export keeps the training cases, so evaluate.py can warn on a SavedModel too.
    exported_run = json.loads((version / "assets.extra" / "vnet_tf_run.json").read_text())
    assert exported_run["train_cases"] == json.loads((run / "config.json").read_text())["train_cases"] != []


def _untrained_twin(run, target, **model_changes):
    """A copy of the run's workdir whose best.npz holds other (untrained) weights."""
    from vnet_tf.model.checkpoint import save_checkpoint
    from vnet_tf.model.vnet import VNetConfig, build_vnet
    config = json.loads((run / "config.json").read_text())
    config["train"]["model"].update(model_changes)
    config["train_cases"] = config["train_cases"][:1] + ["extra_case"]
    target.mkdir()
    (target / "config.json").write_text(json.dumps(config))
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in config["train"]["model"].items()}
    model = build_vnet(VNetConfig(**fields))
    save_checkpoint(target / "best.npz", {"model": model.variables}, {"step": 0, "best_score": 0})
    return target


def test_an_ensemble_exports_as_one_model_serving_the_mean(tiny_run, tmp_path, rng):
    import tensorflow as tf
    from vnet_tf.serving.exporter import export_run
    from vnet_tf.inference.run_folder import restore_model
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


def test_an_ensemble_of_different_patch_sizes_is_refused_before_writing(tiny_run, tmp_path):
    run, _ = tiny_run
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((run / "config.json").read_text())
    config["train"]["patch_size_zyx"] = [p + 8 for p in config["train"]["patch_size_zyx"]]
    (other / "config.json").write_text(json.dumps(config))
    (other / "best.npz").write_bytes((run / "best.npz").read_bytes())
    base = tmp_path / "base"
    out = _export(f"{run},{other}", base)
    assert out.returncode != 0 and f"{other} cannot be ensembled with {run}: its patch size differs" in out.stderr
    assert "Traceback" not in out.stderr and not base.exists()
