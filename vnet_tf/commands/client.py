"""Send a scan to a TF Serving model and write the label map with the scan's geometry, or write
the REST request (the client itself, and the usage: :mod:`vnet_tf.serving.client`).

    python -m vnet_tf.commands.client --scan=case.nii.gz --output=seg.nii.gz --server=localhost:8501 --model=vnet
"""

from __future__ import annotations

import sys

from absl import flags

from vnet_tf.commands import cli
from vnet_tf.core.errors import UserError
from vnet_tf.serving.client import ServingError, segment_file, write_request

flags.DEFINE_multi_string("scan", [], "a scan file (repeat for each channel)")
flags.DEFINE_string("output", None, "the label map to write (the scan's format and geometry)")
flags.DEFINE_string("request_json", None, "write the REST request body here instead of sending it")
flags.DEFINE_string("server", "localhost:8501", "host:port (8501 REST, 8500 gRPC)")
flags.DEFINE_string("model", "vnet", "the model name in TF Serving")
flags.DEFINE_enum("protocol", "rest", ["rest", "grpc"], "TF Serving's REST or gRPC API")
FLAGS = flags.FLAGS


def main(argv) -> int:
    cli.positionals(argv)
    if not FLAGS.scan:
        raise UserError("--scan: expected at least one scan file, found none")
    if bool(FLAGS.output) == bool(FLAGS.request_json):
        raise UserError("give exactly one of --output and --request_json")
    try:
        if FLAGS.request_json:
            write_request(FLAGS.scan, FLAGS.request_json)
        else:
            segment_file(FLAGS.scan, FLAGS.output, FLAGS.server, FLAGS.model, FLAGS.protocol)
    except ServingError as err:  # the server's answer: exit 1, as a failed request
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.request_json or FLAGS.output}")
    return 0


def run() -> None:
    """The ``vnet-client`` command."""
    cli.run(main)


if __name__ == "__main__":
    run()
