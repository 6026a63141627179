"""`ModelServer`: TF Serving's REST API over the versions of one model, as a WSGI app (`server.serve` runs it).

Routes, parsed as TF Serving parses them (its path patterns, case-insensitive except the verb; `/versions/01` is
version 1), so a client written for TF Serving works unchanged:

    GET  /v1/models/<name>[/versions/<v>]              model status (every version TF Serving would list)
    GET  /v1/models/<name>[/versions/<v>]/metadata     signature definitions
    POST /v1/models/<name>[/versions/<v>]:predict      {"signature_name"?, "instances" | "inputs"}
    POST /v1/models/<name>[/versions/<v>]:classify     answered as TF Serving answers a predict-only model (400)
    POST /v1/models/<name>[/versions/<v>]:regress      likewise

Limits of this server (TF Serving has none): a body over `max_request_bytes` gets a JSON 413; more than
`max_batch_size` examples get 413; an image whose header declares more than `max_image_pixels` pixels gets 400
before anything is decoded.
"""
import json
import logging
import os
import re
import threading
import urllib.parse

import numpy as np
import tensorflow as tf
from werkzeug.wrappers import Request, Response

from keras_nfnet import storage
from keras_nfnet.serving import rest_api
from keras_nfnet.serving.image_headers import DEFAULT_MAX_IMAGE_PIXELS, MAX_GIF_BLOCKS, declared_image_size
from keras_nfnet.serving.rest_api import CLASSIFY_METHOD, REGRESS_METHOD, ClientError, json_snippet, json_type
from keras_nfnet.serving.versions import (
    DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
    DEFAULT_MAX_NUM_LOAD_RETRIES,
    DEFAULT_POLL_WAIT_SECONDS,
    ModelVersions,
)

logger = logging.getLogger("keras_nfnet.serving")

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ModelServer:
    """TF Serving's REST API over the versions of one model (a WSGI app)."""

    def __init__(self, model_base_path, model_name=None, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                 file_system_poll_wait_seconds=DEFAULT_POLL_WAIT_SECONDS,
                 max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_seconds=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
                 num_request_iterations_for_warmup=0, enable_signature_method_name_check=False):
        model_base_path = storage.abspath(model_base_path)
        for flag, value in (("max_batch_size", max_batch_size), ("max_request_bytes", max_request_bytes),
                            ("max_image_pixels", max_image_pixels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{flag} must be a positive int, got {value!r}")
        self.model_name = model_name or storage.basename(model_base_path.rstrip(os.sep))
        self.max_batch_size = max_batch_size
        self.max_request_bytes = max_request_bytes
        self.max_image_pixels = max_image_pixels
        self.method_name_check = enable_signature_method_name_check
        self.versions = ModelVersions(
            model_base_path, self.model_name, poll_wait_seconds=file_system_poll_wait_seconds,
            max_num_load_retries=max_num_load_retries, load_retry_interval_seconds=load_retry_interval_seconds,
            warmup_iterations=num_request_iterations_for_warmup or 1, warmup=self._warmup)
        self._lock = threading.Lock()
        self._in_flight = 0

    def start(self):
        self.versions.start()
        return self

    def stop(self):
        self.versions.stop()

    @property
    def in_flight(self):
        return self._in_flight

    # --- WSGI -----------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        with self._lock:
            self._in_flight += 1
        try:
            response = self._dispatch(request)
        finally:
            with self._lock:
                self._in_flight -= 1
        return response(environ, start_response)

    def _dispatch(self, request):
        path = urllib.parse.urlsplit(request.environ.get("REQUEST_URI") or request.path).path or request.path
        method = request.method
        try:
            if not rest_api.API_PATH.fullmatch(path):
                raise ClientError(f"no such resource: {path} (expected /v1/models/<name>[...])", 404)
            if method == "OPTIONS":  # CORS preflight, as TF Serving answers it
                if re.search(r"https?://", request.headers.get("Origin", "")):
                    return Response(b"", status=200)
                raise ClientError("Origin header is missing in CORS preflight")
            if method == "POST":
                match = rest_api.PREDICT_PATH.fullmatch(path)
                if match and match.group(4) in ("predict", "classify", "regress"):
                    name, version, label = rest_api.model_spec(match)
                    body = self._body(request)
                    if match.group(4) == "predict":
                        return _json(self._predict(name, version, label, body))
                    return _json(self._classify_or_regress(match.group(4), name, version, label, body))
            elif method == "GET":
                match = rest_api.STATUS_PATH.fullmatch(path)
                if match:
                    name, version, label = rest_api.model_spec(match)
                    if not name:
                        raise ClientError("Missing model name in request.")
                    if match.group(4) == "metadata":
                        return _json(self._metadata(name, version, label))
                    return _json(self._status(name, version))
            raise ClientError(f"Malformed request: {method} {path}")
        except ClientError as error:
            return _json({"error": str(error)}, error.status)
        except Exception as error:  # noqa: BLE001 - report, keep serving
            logger.exception("unexpected error on %s", path)
            return _json({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    def _body(self, request):
        length = request.content_length or 0
        if length > self.max_request_bytes:
            # The body was read and dropped as it came in (server.py's BoundedBodyParser): nothing is buffered.
            raise ClientError(f"request body of {length} bytes exceeds this server's limit of "
                              f"{self.max_request_bytes} bytes (--max_request_bytes)", 413)
        return request.get_data(cache=False)

    def _servable(self, name, version, label):
        if label is not None:
            raise ClientError(f"Unrecognized servable version label: {label}")
        servable = self.versions.get(version) if name == self.model_name else None
        if servable is None:
            spec = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            available = ", ".join(map(str, self.versions.available_versions)) or "none"
            raise ClientError(f"Servable not found for request: {spec} (this server has {self.model_name}, "
                              f"available versions: {available})", 404)
        return servable

    # --- status and metadata ------------------------------------------------------------------------------------

    def _status(self, name, version):
        statuses = self.versions.statuses(version) if name == self.model_name else None
        if statuses is None:
            if version is None:
                raise ClientError(f"Could not find any versions of model {name}", 404)
            raise ClientError(f"Could not find version {version} of model {name}", 404)
        return {"model_version_status": statuses}

    def _metadata(self, name, version, label):
        servable = self._servable(name, version, label)
        return {
            "model_spec": {"name": servable.name, "signature_name": "", "version": str(servable.version)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
        }

    # --- predict ------------------------------------------------------------------------------------------------

    def _predict(self, name, version, label, body):
        body = rest_api.parse_json_body(body)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ClientError(f"JSON Value: {json_snippet(signature_name)} 'signature_name' key must be a string "
                              "value.")
        servable = self._servable(name, version, label)
        signature_name = signature_name or "serving_default"
        if signature_name not in servable.signatures:
            raise ClientError(f"Serving signature name: \"{signature_name}\" not found in signature def; "
                              f"available: {sorted(servable.signatures)}")
        specs = servable.inputs[signature_name]
        has_rows, has_columns = "instances" in body, "inputs" in body
        if has_rows == has_columns:
            raise ClientError("request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
        if has_rows:
            columns = rest_api.rows_to_columns(body["instances"], specs)
        else:
            columns = rest_api.columnar(body["inputs"], specs)
        for input_name, value in columns.items():
            if not isinstance(value, list):
                raise ClientError(f"input '{input_name}' must be a list with one entry per example")
        sizes = {len(value) for value in columns.values()}
        if len(sizes) != 1:
            raise ClientError(f"all inputs must have the same batch size, got {sorted(sizes)}")
        batch = sizes.pop()
        if batch == 0:
            raise ClientError("empty batch: send at least one instance")
        # Checked before any decoding so an oversized request costs nothing.
        if batch > self.max_batch_size:
            raise ClientError(f"batch of {batch} exceeds this server's limit of {self.max_batch_size} per request",
                              413)
        tensors = {input_name: self._to_tensor(input_name, value, specs[input_name])
                   for input_name, value in columns.items()}
        outputs = self._run(servable, signature_name, tensors)
        outputs = {key: rest_api.to_json(key, value.numpy()) for key, value in sorted(outputs.items())}
        if has_rows:
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values()))}
            return {"predictions": [{key: value[i] for key, value in outputs.items()} for i in range(batch)]}
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

    @staticmethod
    def _run(servable, signature_name, tensors):
        try:
            return servable.signatures[signature_name](**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise ClientError(rest_api.first_line(error)) from None

    def _warmup(self, servable, signature_name, inputs):
        """Replay one warm-up request: the same checks and call as a request."""
        if signature_name not in servable.signatures:
            raise ClientError(f"warm-up request for signature \"{signature_name}\", which the model does not have")
        specs = servable.inputs[signature_name]
        tensors = {}
        for key, value in inputs.items():
            if key not in specs:
                raise ClientError(f"warm-up request input '{key}' is not an input of {signature_name}")
            if specs[key].dtype == tf.string:
                for i, item in enumerate(np.asarray(value).reshape(-1)):
                    self._check_image_size(key, i, item)
            tensors[key] = tf.constant(value, specs[key].dtype)
        self._run(servable, signature_name, tensors)

    # --- classify and regress -----------------------------------------------------------------------------------

    def _classify_or_regress(self, verb, name, version, label, body):
        """What TF Serving answers (http_rest_api_handler.cc, classifier.cc, regressor.cc): the JSON is checked
        first, then the signature. An export of this package has predict signatures only, so this ends in 400."""
        body = rest_api.parse_json_body(body)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ClientError(f"JSON Value: {json_snippet(signature_name)} 'signature_name' key must be a string "
                              "value.")
        if "context" in body and not isinstance(body["context"], dict):
            raise ClientError(f"Example must be JSON object but got JSON {json_type(body['context'])}")
        examples = body.get("examples")
        if "examples" not in body:
            raise ClientError(f"JSON Value: {json_snippet(body)} When method is {verb}, key 'examples' is "
                              "expected and was not found")
        if not isinstance(examples, list):
            raise ClientError(f"JSON Value: {json_snippet(body)} Expecting 'examples' value to be an list/array")
        if not examples:
            raise ClientError(f"JSON Value: {json_snippet(body)} 'examples' value is an empty array")
        for example in examples:
            if not isinstance(example, dict):
                raise ClientError(f"Example must be JSON object but got JSON {json_type(example)}")
        servable = self._servable(name, version, label)
        signature_name = signature_name or "serving_default"
        if signature_name not in servable.signature_defs:
            raise ClientError(f"No signature was found with the name: {signature_name}")
        signature = servable.signature_defs[signature_name]
        method = signature.get("method_name", "")
        kind, expected = ("classification", CLASSIFY_METHOD) if verb == "classify" else ("regression", REGRESS_METHOD)
        if self.method_name_check and method != expected:
            raise ClientError(f"Expected {kind} signature method_name to be {expected}. Was: {method}")
        inputs, outputs = signature.get("inputs", {}), signature.get("outputs", {})
        if len(inputs) != 1:
            problem = "Expected one input Tensor."
        elif verb == "classify" and len(outputs) not in (1, 2):
            problem = f"Expected one or two output Tensors, found {len(outputs)}"
        elif verb == "regress" and len(outputs) != 1:
            problem = "Expected one output Tensor."
        elif "inputs" not in inputs:
            problem = f"No {kind} inputs found in SignatureDef: {signature_name}"
        elif method == expected:
            raise ClientError(f":{verb} is not implemented by this server (it runs :predict signatures)", 501)
        else:
            problem = f"Expected {kind} signature method_name to be {expected}. Was: {method}"
        # TF Serving's message first (its method-name check is off by default), then what would have worked.
        raise ClientError(f"{problem} (:{verb} needs a signature with method_name {expected}; \"{signature_name}\" "
                          f"has method_name {method}: use :predict)")

    # --- JSON -> tensors ---------------------------------------------------------------------------------------

    def _check_image_size(self, name, index, item):
        size = declared_image_size(item)
        if size is None:
            return
        width, height, pixels, too_complex = size
        if too_complex:
            raise ClientError(f"input '{name}'[{index}] is a GIF with more than {MAX_GIF_BLOCKS} blocks (frames "
                              "and extensions); not decoded")
        if pixels > self.max_image_pixels:
            raise ClientError(f"input '{name}'[{index}] declares {width}x{height} = {pixels} pixels, more than the "
                              f"limit of {self.max_image_pixels} pixels (--max_image_pixels); not decoded")

    def _to_tensor(self, name, value, spec):
        if spec.dtype == tf.string:
            items = [rest_api.decode_b64_input(name, i, item) for i, item in enumerate(value)]
            for i, item in enumerate(items):
                self._check_image_size(name, i, item)
            return tf.constant(items, tf.string)
        try:
            array = np.asarray(value)
        except (ValueError, RecursionError):
            raise ClientError(f"input '{name}': examples must all have the same shape") from None
        if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
            raise ClientError(f"input '{name}' must be a (nested) list of numbers of one shape")
        if not spec.shape.is_compatible_with(array.shape) or array.size == 0:
            raise ClientError(f"input '{name}' has shape {list(array.shape)}; expected {spec.shape.as_list()} "
                              "(None = any size, each at least 1)")
        dtype = spec.dtype.as_numpy_dtype
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            if not np.all(np.isfinite(array)) or array.min() < info.min or array.max() > info.max \
                    or np.any(array != np.round(array)):
                raise ClientError(f"input '{name}' must hold integers in [{info.min}, {info.max}] ({spec.dtype.name})")
        return tf.constant(array.astype(dtype))


def _json(payload, status=200):
    """A JSON response, as TF Serving sends every answer (errors included)."""
    return Response(json.dumps(payload), status=status, mimetype="application/json")
