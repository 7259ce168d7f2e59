"""Send a scan to a TF Serving model and write the label map with the scan's geometry.

    python -m vnet_tf.client --scan case.nii.gz --output seg.nii.gz \\
        --server localhost:8501 --model vnet [--protocol rest|grpc] [--orientation LPS]

The scan is read with SimpleITK, reoriented to the orientation the model was trained in
(``LPS`` by default, no interpolation), sent with its spacing (z, y, x) to the
``serving_default`` signature, and the returned labels are reoriented back and written on
the scan's own grid. REST uses the ``inputs`` JSON format on port 8501; gRPC (port 8500)
uses ``tensorflow-serving-api`` with the message-size limits raised for volumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
from typing import Sequence

import numpy as np
import SimpleITK as sitk

GRPC_MAX_BYTES = 1 << 30


def check_volume(volume: np.ndarray) -> np.ndarray:
    """The request's ``volume`` as float32; raises ``ValueError`` naming the input otherwise."""
    array = np.asarray(volume)
    if array.ndim not in (3, 4, 5):
        raise ValueError(f"input volume must be [D,H,W], [D,H,W,C] or [B,D,H,W,C]; got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"input volume must hold numbers (sent as float32); got dtype {array.dtype}")
    if not np.isfinite(array).all():
        raise ValueError("input volume holds NaN or infinite values")
    return array.astype(np.float32)


def rest_request(volume: np.ndarray, spacing_zyx: Sequence[float]) -> bytes:
    return json.dumps({"signature_name": "serving_default",
                       "inputs": {"volume": check_volume(volume).tolist(),
                                  "spacing": [float(s) for s in spacing_zyx]}}).encode()


def predict_rest(server: str, model: str, volume: np.ndarray, spacing_zyx, timeout: float = 600) -> np.ndarray:
    url = f"http://{server}/v1/models/{model}:predict"
    request = urllib.request.Request(url, data=rest_request(volume, spacing_zyx),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body = json.loads(response.read())
    if "error" in body:
        raise RuntimeError(f"{url}: {body['error']}")
    return np.asarray(body["outputs"]["labels"], np.int32)


def predict_grpc(server: str, model: str, volume: np.ndarray, spacing_zyx, timeout: float = 600) -> np.ndarray:
    import grpc  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # pylint: disable=import-outside-toplevel
    options = [("grpc.max_send_message_length", GRPC_MAX_BYTES), ("grpc.max_receive_message_length", GRPC_MAX_BYTES)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model
        request.model_spec.signature_name = "serving_default"
        request.inputs["volume"].CopyFrom(tf.make_tensor_proto(check_volume(volume)))
        request.inputs["spacing"].CopyFrom(tf.make_tensor_proto(np.asarray(spacing_zyx, np.float32)))
        response = stub.Predict(request, timeout=timeout)
        return tf.make_ndarray(response.outputs["labels"]).astype(np.int32)


def segment_file(scan: str, output: str, server: str, model: str, protocol: str = "rest",
                 orientation: str = "LPS") -> None:
    """Reads ``scan``, asks the server, writes the label map to ``output`` (scan's geometry)."""
    image = sitk.ReadImage(scan)
    original = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
    oriented = sitk.DICOMOrient(image, orientation) if orientation else image
    volume = sitk.GetArrayFromImage(oriented)
    spacing_zyx = oriented.GetSpacing()[::-1]
    send = predict_rest if protocol == "rest" else predict_grpc
    labels = send(server, model, volume, spacing_zyx)
    label_image = sitk.GetImageFromArray(labels.astype(np.uint8))
    label_image.CopyInformation(oriented)
    if orientation:
        label_image = sitk.DICOMOrient(label_image, original)
    label_image.CopyInformation(image)  # same grid as the scan, to the last digit
    sitk.WriteImage(label_image, output, True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--server", default="localhost:8501", help="host:port (8501 REST, 8500 gRPC)")
    parser.add_argument("--model", default="vnet", help="the model name in TF Serving")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest")
    parser.add_argument("--orientation", default="LPS", help="the training orientation ('' = none)")
    args = parser.parse_args(argv)
    segment_file(args.scan, args.output, args.server, args.model, args.protocol, args.orientation)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
