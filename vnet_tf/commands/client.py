"""Send a scan to a TF Serving model and write the label map with the scan's geometry, or write
the REST request (the client itself, and the usage: :mod:`vnet_tf.serving.client`).

    python -m vnet_tf.commands.client --scan case.nii.gz --output seg.nii.gz --server localhost:8501 --model vnet
"""

from __future__ import annotations

import argparse
import sys

from vnet_tf.serving.client import ServingError, segment_file, write_request


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", required=True, action="append", help="a scan file (repeat for each channel)")
    parser.add_argument("--output", help="the label map to write (the scan's format and geometry)")
    parser.add_argument("--request_json", help="write the REST request body here instead of sending it")
    parser.add_argument("--server", default="localhost:8501", help="host:port (8501 REST, 8500 gRPC)")
    parser.add_argument("--model", default="vnet", help="the model name in TF Serving")
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="rest",
                        help="TF Serving's REST or gRPC API")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.output) == bool(args.request_json):
        parser.error("give exactly one of --output and --request_json")
    try:
        if args.request_json:
            write_request(args.scan, args.request_json)
        else:
            segment_file(args.scan, args.output, args.server, args.model, args.protocol)
    except (ServingError, ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {args.request_json or args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
