"""A local server that speaks TensorFlow Serving's REST JSON API, for models exported by `keras_nfnet.export`.

Routes (as in TF Serving, so a client written for it works unchanged):

    GET  /v1/models/<name>[/versions/<v>]              model status
    GET  /v1/models/<name>[/versions/<v>]/metadata     signature definitions
    POST /v1/models/<name>[/versions/<v>]:predict      {"signature_name"?, "instances" | "inputs"}

Binary inputs are `{"b64": "..."}`. Errors are `{"error": "..."}` with a 4xx status for anything the client
caused (bad JSON, bad base64, non-images, unknown model/version/signature, too large or too many items), and the
server keeps serving. Only TensorFlow, werkzeug and waitress are imported: no Keras. werkzeug parses requests and
routes; waitress is the multi-threaded WSGI server. SIGTERM drains in-flight requests before exiting.
"""
import base64
import binascii
import json
import logging
import os
import signal
import threading
import time

import numpy as np
import tensorflow as tf
import waitress
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from waitress import wasyncore
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import BaseConverter, Map, Rule
from werkzeug.wrappers import Request, Response

logger = logging.getLogger("keras_nfnet.serving")

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024


class ClientError(Exception):
    """A request the client got wrong: answered with `status` and a JSON error, never a crash."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def find_latest_version(model_base_path):
    """The largest numeric sub-directory of `model_base_path` (TF Serving's default version policy)."""
    if not os.path.isdir(model_base_path):
        raise FileNotFoundError(f"model base path {model_base_path} does not exist")
    versions = [int(d) for d in os.listdir(model_base_path) if d.isdigit()
                and os.path.isfile(os.path.join(model_base_path, d, "saved_model.pb"))]
    if not versions:
        raise FileNotFoundError(
            f"no version under {model_base_path}: expected <model_base_path>/<version>/saved_model.pb"
        )
    return max(versions)


def _signature_defs(export_dir):
    """The SignatureDef map from saved_model.pb as TF Serving prints it in JSON (proto field names)."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    defs = proto.meta_graphs[0].signature_def
    return {
        key: json_format.MessageToDict(
            defs[key], preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for key in sorted(defs)
        if not key.startswith("__")
    }


def _first_line(error):
    """The useful part of a TF runtime error (its message without the graph node dump)."""
    message = getattr(error, "message", str(error))
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("[[", "Graph execution error", "Detected at node",
                                                             "<stack traces"))]
    return (useful or lines or ["prediction failed"])[0]


class _NameConverter(BaseConverter):
    """A model name or version: no '/' and no ':' (so `<name>:predict` is never read as a name)."""

    regex = r"[^/:]+"


class ModelServer:
    """A loaded SavedModel plus the WSGI app that serves it over TF Serving's REST API."""

    def __init__(self, model_base_path, model_name=None, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES):
        model_base_path = os.path.abspath(model_base_path)
        if not isinstance(max_batch_size, int) or max_batch_size <= 0:
            raise ValueError(f"max_batch_size must be a positive int, got {max_batch_size!r}")
        if not isinstance(max_request_bytes, int) or max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be a positive int, got {max_request_bytes!r}")
        self.model_name = model_name or os.path.basename(model_base_path.rstrip(os.sep))
        self.version = find_latest_version(model_base_path)
        self.export_dir = os.path.join(model_base_path, str(self.version))
        self.max_batch_size = max_batch_size
        self.max_request_bytes = max_request_bytes
        self._loaded = tf.saved_model.load(self.export_dir)
        self._signatures = dict(self._loaded.signatures)
        self._signature_defs = _signature_defs(self.export_dir)
        self._inputs = {
            name: fn.structured_input_signature[1] for name, fn in self._signatures.items()
        }
        self._lock = threading.Lock()
        self._in_flight = 0
        self._urls = Map(
            [
                Rule("/v1/models/<name>", endpoint="status", methods=["GET"]),
                Rule("/v1/models/<name>/versions/<version>", endpoint="status", methods=["GET"]),
                Rule("/v1/models/<name>/metadata", endpoint="metadata", methods=["GET"]),
                Rule("/v1/models/<name>/versions/<version>/metadata", endpoint="metadata", methods=["GET"]),
                Rule("/v1/models/<name>:predict", endpoint="predict", methods=["POST"]),
                Rule("/v1/models/<name>/versions/<version>:predict", endpoint="predict", methods=["POST"]),
            ],
            converters={"default": _NameConverter},
        )
        logger.info("loaded %s version %s from %s (signatures: %s)", self.model_name, self.version,
                    self.export_dir, ", ".join(sorted(self._signatures)))

    @property
    def in_flight(self):
        return self._in_flight

    # --- WSGI -----------------------------------------------------------------------------------------------

    def __call__(self, environ, start_response):
        request = Request(environ)
        request.max_content_length = self.max_request_bytes
        with self._lock:
            self._in_flight += 1
        try:
            response = self._dispatch(request)
        finally:
            with self._lock:
                self._in_flight -= 1
        return response(environ, start_response)

    def _dispatch(self, request):
        try:
            endpoint, args = self._urls.bind_to_environ(request.environ).match()
            self._check_model(args["name"], args.get("version"))
            if endpoint == "status":
                return _json(self._status())
            if endpoint == "metadata":
                return _json(self._metadata())
            return _json(self._predict(request))
        except ClientError as error:
            return _json({"error": str(error)}, error.status)
        except MethodNotAllowed as error:
            return _json({"error": f"{request.method} is not allowed here; use {', '.join(error.valid_methods)}"},
                         405)
        except NotFound:
            return _json({"error": f"no such resource: {request.path} (expected /v1/models/<name>[...])"}, 404)
        except HTTPException as error:  # e.g. 413 from max_content_length
            return _json({"error": error.description}, error.code)
        except Exception as error:  # noqa: BLE001 - report, keep serving
            logger.exception("unexpected error on %s", request.path)
            return _json({"error": f"internal error: {type(error).__name__}: {error}"}, 500)

    def _check_model(self, name, version):
        if name != self.model_name:
            raise ClientError(f"Servable not found for request: Latest({name}); this server has {self.model_name}",
                              404)
        if version is not None and version != str(self.version):
            raise ClientError(
                f"Servable not found for request: Specific({name}, {version}); available version: {self.version}",
                404)

    # --- the three APIs ---------------------------------------------------------------------------------------

    def _status(self):
        return {"model_version_status": [
            {"version": str(self.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]}

    def _metadata(self):
        return {
            "model_spec": {"name": self.model_name, "signature_name": "", "version": str(self.version)},
            "metadata": {"signature_def": {"signature_def": self._signature_defs}},
        }

    def _predict(self, request):
        try:
            body = json.loads(request.get_data(cache=False))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ClientError(f"request body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise ClientError("request body must be a JSON object with 'instances' or 'inputs'")
        signature_name = body.get("signature_name") or "serving_default"
        if not isinstance(signature_name, str):
            raise ClientError(f"signature_name must be a string; got {signature_name!r}")
        if signature_name not in self._signatures:
            raise ClientError(f"Serving signature name: \"{signature_name}\" not found in signature def; "
                              f"available: {sorted(self._signatures)}")
        specs = self._inputs[signature_name]
        has_rows, has_columns = "instances" in body, "inputs" in body
        if has_rows == has_columns:
            raise ClientError("request must have exactly one of 'instances' (row format) or 'inputs' (columnar)")
        if has_rows:
            columns = self._rows_to_columns(body["instances"], specs)
        else:
            columns = self._columnar(body["inputs"], specs)
        for name, value in columns.items():
            if not isinstance(value, list):
                raise ClientError(f"input '{name}' must be a list with one entry per example")
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
        tensors = {name: self._to_tensor(name, value, specs[name]) for name, value in columns.items()}
        try:
            outputs = self._signatures[signature_name](**tensors)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise ClientError(_first_line(error)) from None
        outputs = {name: _to_json(name, value.numpy()) for name, value in sorted(outputs.items())}
        if has_rows:
            if len(outputs) == 1:
                return {"predictions": next(iter(outputs.values()))}
            return {"predictions": [{name: value[i] for name, value in outputs.items()} for i in range(batch)]}
        return {"outputs": next(iter(outputs.values())) if len(outputs) == 1 else outputs}

    # --- JSON <-> tensors -------------------------------------------------------------------------------------

    @staticmethod
    def _rows_to_columns(instances, specs):
        if not isinstance(instances, list):
            raise ClientError("'instances' must be a list (one entry per example)")
        names = list(specs)
        columns = {name: [] for name in names}
        for i, instance in enumerate(instances):
            if isinstance(instance, dict) and "b64" not in instance:
                if set(instance) != set(names):
                    raise ClientError(f"instances[{i}] has inputs {sorted(instance)}; expected {names}")
                for name in names:
                    columns[name].append(instance[name])
            elif len(names) == 1:
                columns[names[0]].append(instance)
            else:
                raise ClientError(f"instances[{i}] must be an object with the inputs {names}")
        return columns

    @staticmethod
    def _columnar(inputs, specs):
        names = list(specs)
        if isinstance(inputs, dict) and "b64" not in inputs:
            if set(inputs) != set(names):
                raise ClientError(f"'inputs' has {sorted(inputs)}; expected {names}")
            return inputs
        if len(names) != 1:
            raise ClientError(f"'inputs' must be an object with the inputs {names}")
        return {names[0]: inputs}

    @staticmethod
    def _to_tensor(name, value, spec):
        if spec.dtype == tf.string:
            return tf.constant([_decode_b64(name, i, item) for i, item in enumerate(value)], tf.string)
        try:
            array = np.asarray(value)
        except ValueError:
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


def _decode_b64(name, index, item):
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise ClientError(f"input '{name}'[{index}] must be {{\"b64\": \"<base64 string>\"}}")
        try:
            return base64.b64decode(item["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ClientError(f"input '{name}'[{index}] is not valid base64") from None
    if isinstance(item, str):
        return item.encode("utf-8")
    raise ClientError(f"input '{name}'[{index}] must be a string or {{\"b64\": ...}}")


def _to_json(name, array):
    """Output tensor -> JSON value; strings as UTF-8 text, or base64 for names ending in `_bytes` (TF Serving)."""
    if array.dtype == object:
        def convert(item):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace")
        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()


def _json(payload, status=200):
    return Response(json.dumps(payload), status=status, mimetype="application/json")


def serve(model_base_path, model_name=None, host="127.0.0.1", port=8501, threads=4,
          max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
          grace_seconds=10.0, ready_callback=None):
    """Serve until SIGTERM/SIGINT; then stop accepting, finish in-flight requests (up to `grace_seconds`), exit.

    `ready_callback(host, port)` is called once the socket is listening (port 0 picks a free port).
    """
    app = ModelServer(model_base_path, model_name, max_batch_size=max_batch_size,
                      max_request_bytes=max_request_bytes)
    socket_map = {}
    server = waitress.create_server(app, map=socket_map, host=host, port=port, threads=threads,
                                    # waitress' own (plain-text) 413 is only a backstop for bodies far over
                                    # the limit; below it the app answers with TF Serving's JSON error.
                                    max_request_body_size=4 * max_request_bytes, ident="keras-nfnet-serving")
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("received signal %d: draining", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    bound_host, bound_port = server.effective_host, server.effective_port
    print(f"serving {app.model_name} version {app.version} at http://{bound_host}:{bound_port}/v1/models/"
          f"{app.model_name}", flush=True)
    if ready_callback is not None:
        ready_callback(bound_host, bound_port)
    try:
        while not stop.is_set():
            wasyncore.loop(timeout=0.2, map=socket_map, count=1)
        # Stop accepting (close the listening socket: new connections are refused), then keep the loop running
        # until every request already being received or computed has been answered, or the grace time is up.
        wasyncore.dispatcher.close(server)
        deadline = time.monotonic() + grace_seconds
        while time.monotonic() < deadline and (app.in_flight or _pending_output(socket_map)):
            wasyncore.loop(timeout=0.05, map=socket_map, count=1)
    finally:
        server.task_dispatcher.shutdown(timeout=max(1.0, grace_seconds))
        wasyncore.close_all(socket_map)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped serving {app.model_name}", flush=True)


def _pending_output(socket_map):
    """Whether any connection is still receiving a request, has requests queued, or has unsent output."""
    return any(getattr(channel, "request", None) is not None or getattr(channel, "requests", None)
               or getattr(channel, "total_outbufs_len", 0) for channel in list(socket_map.values()))
