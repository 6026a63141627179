"""Serve an exported model over TensorFlow Serving's REST JSON API on 127.0.0.1.

    python trainers/serve.py --model_base_path=/tmp/serving/nfnet --rest_api_port=8501

The flags are named like TF Serving's model server's, so the same command line shape works for both.
Stop with SIGTERM or Ctrl-C: in-flight requests are answered before the process exits.
"""
import logging

from absl import app, flags

from keras_nfnet import serving
from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model_base_path", None, "Directory holding numeric version sub-directories of one model.")
flags.DEFINE_string("model_name", None, "Name clients use in /v1/models/<name>; default the base path's last part.")
flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (default: this machine only).")
flags.DEFINE_integer("rest_api_port", 8501, "Port to listen on; 0 picks a free port (printed at start).")
flags.DEFINE_integer("threads", 4, "Worker threads handling requests.")
flags.DEFINE_integer("max_batch_size", serving.DEFAULT_MAX_BATCH_SIZE, "Most examples one request may carry.")
flags.DEFINE_integer("max_request_bytes", serving.DEFAULT_MAX_REQUEST_BYTES, "Largest request body accepted.")
flags.DEFINE_float("grace_seconds", 10.0, "On SIGTERM, how long to wait for in-flight requests.")
flags.mark_flag_as_required("model_base_path")


def main(argv):
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serving.serve(
        FLAGS.model_base_path,
        model_name=FLAGS.model_name,
        host=FLAGS.host,
        port=FLAGS.rest_api_port,
        threads=FLAGS.threads,
        max_batch_size=FLAGS.max_batch_size,
        max_request_bytes=FLAGS.max_request_bytes,
        grace_seconds=FLAGS.grace_seconds,
    )


if __name__ == "__main__":
    cli.run(main)
