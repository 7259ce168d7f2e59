"""Send a scan to a TF Serving model and write the label map with the scan's geometry.

    python -m vnet_tf.commands.client --scan case.nii.gz --output seg.nii.gz \\
        --server localhost:8501 --model vnet [--protocol rest|grpc]
    python -m vnet_tf.commands.client --scan case.nii.gz --request_json request.json   # for curl

The scan is read with SimpleITK (several ``--scan`` files are the channels of one case) and
sent as it is, with its spacing (z, y, x) and direction cosines, to the ``serving_default``
signature: the served graph reorients, resamples and normalises as the run did, and returns
the labels on the scan's grid. The client then applies the connected-component
post-processing the response names (:mod:`vnet_tf.inference.segmentation`, as ``evaluate.py`` does) and
writes the labels with the scan's geometry. Only ``labels`` and ``postprocess`` are asked
for. REST (port 8501) uses the ``inputs`` JSON format; gRPC (port 8500) uses
``tensorflow-serving-api`` with the message-size limits raised for volumes. A request the
server refuses raises ``ServingError`` with the server's own message.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Dict, Sequence

import numpy as np

from vnet_tf.core.integrity import nonfinite_problem
from vnet_tf.core.io import read_image, write_volume
from vnet_tf.inference.segmentation import ScanArrays, postprocess_label, scan_arrays

GRPC_MAX_BYTES = 1 << 30
OUTPUTS = ("labels", "postprocess")


class ServingError(RuntimeError):
    """The server refused or failed the request; the message is the server's."""


def check_request(volume: np.ndarray, spacing_zyx, direction) -> Dict[str, np.ndarray]:
    """The request's inputs as float32; ``ValueError`` naming the input otherwise. The
    direction is required: without it the served graph cannot bring the array to the run's
    orientation."""
    array = np.asarray(volume)
    if array.ndim not in (3, 4, 5):
        raise ValueError(f"input volume: expected [D,H,W], [D,H,W,C] or [B,D,H,W,C]; got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"input volume: expected numbers (sent as float32); got dtype {array.dtype}")
    problem = nonfinite_problem(None, array)
    if problem:
        raise ValueError(f"input volume: {problem}")
    spacing = np.asarray(spacing_zyx, np.float32).ravel()
    if spacing.size != 3 or not np.all(np.isfinite(spacing)) or not np.all(spacing > 0):
        raise ValueError(f"input spacing: expected 3 positive finite values (mm, z, y, x); got {spacing.tolist()}")
    cosines = np.asarray(direction if direction is not None else [], np.float32).ravel()
    if cosines.size != 9:
        raise ValueError(f"input direction: expected the scan's 9 direction cosines (SimpleITK's GetDirection()); "
                         f"got {cosines.size} values: without them the array's orientation is unknown")
    return {"volume": array.astype(np.float32), "spacing": spacing, "direction": cosines}


def rest_request(volume: np.ndarray, spacing_zyx, direction) -> bytes:
    inputs = check_request(volume, spacing_zyx, direction)
    return json.dumps({"signature_name": "serving_default",
                       "inputs": {k: v.tolist() for k, v in inputs.items()}}).encode()


def predict_rest(server: str, model: str, volume: np.ndarray, spacing_zyx, direction,
                 timeout: float = 600) -> Dict[str, object]:
    url = f"http://{server}/v1/models/{model}:predict"
    request = urllib.request.Request(url, data=rest_request(volume, spacing_zyx, direction),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            text = json.loads(text).get("error", text)
        except ValueError:
            pass
        raise ServingError(f"{url}: HTTP {err.code}: {text}") from None
    if "error" in body:
        raise ServingError(f"{url}: {body['error']}")
    outputs = body["outputs"]
    return {"labels": np.asarray(outputs["labels"], np.int32), "postprocess": str(outputs.get("postprocess", "none"))}


def predict_grpc(server: str, model: str, volume: np.ndarray, spacing_zyx, direction,
                 timeout: float = 600) -> Dict[str, object]:
    import grpc  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel
    inputs = check_request(volume, spacing_zyx, direction)
    options = [("grpc.max_send_message_length", GRPC_MAX_BYTES), ("grpc.max_receive_message_length", GRPC_MAX_BYTES)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        request.output_filter.extend(OUTPUTS)
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as err:
            raise ServingError(f"{server}: {err.code().name}: {err.details()}") from None
        postprocess = tf.make_ndarray(response.outputs["postprocess"]).item()
        return {"labels": tf.make_ndarray(response.outputs["labels"]).astype(np.int32),
                "postprocess": postprocess.decode() if isinstance(postprocess, bytes) else str(postprocess)}


def apply_postprocess(labels: np.ndarray, postprocess: str) -> np.ndarray:
    """The post-processing a response names (``none``, ``largest`` or ``min_size:N``)."""
    mode, _, size = postprocess.partition(":")
    return postprocess_label(labels.astype(np.uint8), mode, int(size or 0))


def segment_scan(scan: ScanArrays, server: str, model: str, protocol: str = "rest") -> np.ndarray:
    """The server's labels for ``scan``, post-processed as the response says."""
    send = predict_rest if protocol == "rest" else predict_grpc
    out = send(server, model, scan.volume, scan.spacing_zyx, scan.direction)
    return apply_postprocess(out["labels"], out["postprocess"])


def segment_file(scans: Sequence[str], output: str, server: str, model: str, protocol: str = "rest") -> None:
    """Reads ``scans`` (the channels of one case), asks the server, writes the label map to
    ``output`` on the scan's grid."""
    scans = [scans] if isinstance(scans, str) else list(scans)
    scan = scan_arrays([read_image(s) for s in scans], names=scans)
    write_volume(output, segment_scan(scan, server, model, protocol), scan.geometry)


def write_request(scans: Sequence[str], path: str) -> None:
    """Writes the REST request body for ``scans`` (the channels of one case) to ``path``, for
    ``curl -d @path`` (the labels come back on the scan's array grid, not post-processed)."""
    scans = [scans] if isinstance(scans, str) else list(scans)
    scan = scan_arrays([read_image(s) for s in scans], names=scans)
    with open(path, "wb") as out:
        out.write(rest_request(scan.volume, scan.spacing_zyx, scan.direction))
