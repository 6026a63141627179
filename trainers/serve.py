"""Serve an exported model over TensorFlow Serving's REST JSON API on 127.0.0.1.

    python trainers/serve.py --model_base_path=/tmp/serving/nfnet --rest_api_port=8501

The flags are named like TF Serving's model server's, so the same command line shape works for both. It starts
serving once the newest version is loaded and warmed up, then polls the base path for new versions every
--file_system_poll_wait_seconds (as TF Serving does). Stop with SIGTERM or Ctrl-C: in-flight requests are answered
before the process exits.
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
flags.DEFINE_integer("max_request_bytes", serving.DEFAULT_MAX_REQUEST_BYTES,
                     "Largest request body accepted; a larger one gets a JSON 413.")
flags.DEFINE_integer("max_image_pixels", serving.DEFAULT_MAX_IMAGE_PIXELS,
                     "An image whose header declares more pixels (all GIF frames together) gets a 400, undecoded.")
flags.DEFINE_float("file_system_poll_wait_seconds", serving.DEFAULT_POLL_WAIT_SECONDS,
                   "Seconds between polls of the base path for new versions; 0: look once at start-up.")
flags.DEFINE_integer("max_num_load_retries", serving.DEFAULT_MAX_NUM_LOAD_RETRIES,
                     "Retries of a version that fails to load before it is reported as failed (TF Serving: 5).")
flags.DEFINE_integer("load_retry_interval_micros", int(serving.DEFAULT_LOAD_RETRY_INTERVAL_SECONDS * 1e6),
                     "Microseconds between load retries (TF Serving: one minute).")
flags.DEFINE_integer("num_request_iterations_for_warmup", 0,
                     "Times each warm-up request is replayed at load; 0: once.")
flags.DEFINE_bool("enable_signature_method_name_check", False,
                  "As TF Serving's flag: :classify/:regress check the signature's method_name first.")
flags.DEFINE_float("grace_seconds", 10.0, "On SIGTERM, how long to wait for in-flight requests.")
flags.mark_flag_as_required("model_base_path")


def main(argv):
    del argv
    if FLAGS.file_system_poll_wait_seconds < 0:
        raise app.UsageError("--file_system_poll_wait_seconds must be >= 0 (0: look for versions once)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    serving.serve(
        FLAGS.model_base_path,
        model_name=FLAGS.model_name,
        host=FLAGS.host,
        port=FLAGS.rest_api_port,
        threads=FLAGS.threads,
        max_batch_size=FLAGS.max_batch_size,
        max_request_bytes=FLAGS.max_request_bytes,
        max_image_pixels=FLAGS.max_image_pixels,
        file_system_poll_wait_seconds=FLAGS.file_system_poll_wait_seconds,
        max_num_load_retries=FLAGS.max_num_load_retries,
        load_retry_interval_seconds=FLAGS.load_retry_interval_micros / 1e6,
        num_request_iterations_for_warmup=FLAGS.num_request_iterations_for_warmup,
        enable_signature_method_name_check=FLAGS.enable_signature_method_name_check,
        grace_seconds=FLAGS.grace_seconds,
    )


if __name__ == "__main__":
    cli.run(main)
