"""A local server that speaks TensorFlow Serving's REST JSON API, for models exported by `keras_nfnet.export`.

    from keras_nfnet import serving
    serving.serve("/tmp/serving/digits", port=8501)

One module per job:

- `image_headers`: the pixels an encoded image's header declares, read before anything is decoded;
- `rest_api`: TF Serving's URL patterns, lenient base64, JSON request parsing, outputs as JSON, `ClientError`;
- `versions`: `Servable` (one loaded version) and `ModelVersions` (polling the base path, loading, warm-up replay,
  unloading, the status of every version), as TF Serving's file-system source and version policy do;
- `app`: `ModelServer`, the WSGI app answering the REST routes with the request limits;
- `server`: `serve`, which runs the app on waitress and drains in-flight requests on SIGTERM.

Only TensorFlow (with the tensorflow-serving-api protos for the warm-up file), werkzeug and waitress are
imported: no Keras.
"""
from keras_nfnet.serving.app import DEFAULT_MAX_BATCH_SIZE, DEFAULT_MAX_REQUEST_BYTES, ModelServer
from keras_nfnet.serving.image_headers import DEFAULT_MAX_IMAGE_PIXELS, MAX_GIF_BLOCKS, declared_image_size
from keras_nfnet.serving.rest_api import (
    CLASSIFY_METHOD,
    PREDICT_METHOD,
    REGRESS_METHOD,
    ClientError,
    decode_base64,
    parse_json_body,
)
from keras_nfnet.serving.server import serve
from keras_nfnet.serving.versions import (
    DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    DEFAULT_POLL_WAIT_SECONDS,
    MAX_WARMUP_RECORDS,
    WARMUP_FILE,
    LoadError,
    ModelVersions,
    Servable,
)

__all__ = [
    "CLASSIFY_METHOD",
    "DEFAULT_LOAD_RETRY_INTERVAL_SECONDS",
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_IMAGE_PIXELS",
    "DEFAULT_MAX_NUM_LOAD_RETRIES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_POLL_WAIT_SECONDS",
    "MAX_GIF_BLOCKS",
    "MAX_WARMUP_RECORDS",
    "PREDICT_METHOD",
    "REGRESS_METHOD",
    "WARMUP_FILE",
    "ClientError",
    "LoadError",
    "ModelServer",
    "ModelVersions",
    "Servable",
    "declared_image_size",
    "decode_base64",
    "parse_json_body",
    "serve",
]
