"""A local server that speaks TensorFlow Serving's REST JSON API, for models exported by `keras_nfnet.export`.

Routes, parsed as TF Serving parses them (its path patterns, case-insensitive except the verb; `/versions/01` is
version 1), so a client written for TF Serving works unchanged:

    GET  /v1/models/<name>[/versions/<v>]              model status (every version TF Serving would list)
    GET  /v1/models/<name>[/versions/<v>]/metadata     signature definitions
    POST /v1/models/<name>[/versions/<v>]:predict      {"signature_name"?, "instances" | "inputs"}
    POST /v1/models/<name>[/versions/<v>]:classify     answered as TF Serving answers a predict-only model (400)
    POST /v1/models/<name>[/versions/<v>]:regress      likewise

Versions are handled as TF Serving's file-system source and availability-preserving policy handle them: the base
path is polled every `file_system_poll_wait_seconds`; the newest complete version is loaded (its warm-up requests,
`assets.extra/tf_serving_warmup_requests`, are replayed before it is AVAILABLE) and becomes the one served by
default, then older ones are unloaded; a version that fails to load is reported (state END with its error, as in
TF Serving's status API) while the previous one keeps serving; a version whose directory disappears is unloaded.
A directory counts as complete once it has saved_model.pb and its file listing (names, sizes, times) was the same
in two polls in a row, so a version being copied in is not loaded half-written.

Binary inputs are `{"b64": "..."}`, decoded as TF Serving (absl) decodes them: line breaks and other white space
are ignored and padding is optional. Errors are `{"error": "..."}` with TF Serving's status codes (400 for
anything the request got wrong, 404 for an unknown model or version), and the server keeps serving. Limits of
this server (TF Serving has none): a body over `max_request_bytes` gets a JSON 413 (the body is read and
discarded, so the connection stays usable: no reset); more than `max_batch_size` examples get 413; an image whose
header declares more than `max_image_pixels` pixels gets 400 before anything is decoded.

Only TensorFlow (with the tensorflow-serving-api protos for the warm-up file), werkzeug and waitress are
imported: no Keras. waitress is the multi-threaded WSGI server. SIGTERM drains in-flight requests before exiting.
"""
import base64
import binascii
import gc
import io
import json
import logging
import os
import re
import signal
import threading
import time
import urllib.parse

import numpy as np
import tensorflow as tf
import waitress
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import saved_model_pb2
from waitress import wasyncore
from waitress.buffers import OverflowableBuffer
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from werkzeug.wrappers import Request, Response

logger = logging.getLogger("keras_nfnet.serving")

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Same default as keras_nfnet.export.DEFAULT_MAX_IMAGE_PIXELS (not imported: that module needs Keras).
DEFAULT_MAX_IMAGE_PIXELS = 1 << 24
MAX_GIF_BLOCKS = 20000
# TF Serving's defaults.
DEFAULT_POLL_WAIT_SECONDS = 1.0
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_SECONDS = 60.0
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# TF Serving's path patterns (http_rest_api_util.cc), matched against the raw (undecoded) path as RE2::FullMatch.
_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.ASCII)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE | re.ASCII)

# tensorflow/core/protobuf/error_codes.proto, by number.
_ERROR_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


class LoadError(ValueError):
    """The initial version failed to load: the server does not start (as TF Serving)."""


class ClientError(Exception):
    """A request the client got wrong: answered with `status` and a JSON error, never a crash."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


# --- encoded-image headers ---------------------------------------------------------------------------------------

def _u16be(data, i):
    return data[i] << 8 | data[i + 1]


def _jpeg_size(data):
    """(width, height) from the first frame header (SOFn) before any scan, walking markers as libjpeg does."""
    n, i = len(data), 2
    while i < n:
        while i < n and data[i] != 0xFF:  # libjpeg skips stray bytes before a marker (with a warning)
            i += 1
        while i < n and data[i] == 0xFF:  # fill bytes
            i += 1
        if i >= n:
            return None
        marker = data[i]
        i += 1
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 7 > n:
                return None
            return _u16be(data, i + 5), _u16be(data, i + 3)
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            continue
        if i + 2 > n:
            return None
        i += _u16be(data, i)
    return None


def _gif_size(data):
    """(largest frame width, height, pixels of all frames, too many blocks): TensorFlow decodes every frame."""
    n = len(data)

    def byte(p):
        return data[p] if p < n else 0

    def chain_end(p):  # skip data sub-blocks (size, bytes...) up to the 0 terminator
        while p < n and data[p]:
            p += data[p] + 1
        return min(p, n)

    def table_size(flags):
        return 3 * (2 << (flags & 7)) if flags & 0x80 else 0

    pos, total, max_w, max_h = 13 + table_size(byte(10)), 0, 0, 0
    for _ in range(MAX_GIF_BLOCKS):
        c = byte(pos)
        if pos >= n or c not in (0x21, 0x2C):
            return max_w, max_h, total, False
        if c == 0x21:
            pos = chain_end(pos + 2) + 1
        else:
            width, height = byte(pos + 5) | byte(pos + 6) << 8, byte(pos + 7) | byte(pos + 8) << 8
            total += width * height
            max_w, max_h = max(max_w, width), max(max_h, height)
            pos = chain_end(min(pos + 10 + table_size(byte(pos + 9)) + 1, n)) + 1
    return max_w, max_h, total, True


def declared_image_size(data):
    """(width, height, pixels, too_complex) that an encoded image's header declares, or None when `data` is not
    a JPEG, PNG, GIF or BMP file (or its header cannot be read). Reads headers only; decodes nothing.

    The same rules as the SavedModel's own check (`keras_nfnet.export.declared_image_size`): JPEG frame header,
    PNG IHDR, BMP info header (|height|), every GIF frame (pixels summed over frames).
    """
    if data[:3] == b"\xff\xd8\xff":
        size = _jpeg_size(data)
        return None if size is None else (size[0], size[1], size[0] * size[1], False)
    if data[:4] == b"\x89PNG":
        if len(data) < 24:
            return None
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return width, height, width * height, False
    if data[:4] == b"GIF8":
        return _gif_size(data)
    if data[:2] == b"BM":
        if len(data) < 26:
            return None
        width = abs(int.from_bytes(data[18:22], "little", signed=True))
        height = abs(int.from_bytes(data[22:26], "little", signed=True))
        return width, height, width * height, False
    return None


# --- base64 and JSON as TF Serving reads them --------------------------------------------------------------------

_B64_DATA = re.compile(rb"[A-Za-z0-9+/]*")
_ASCII_SPACE = b" \t\n\v\f\r"


def decode_base64(text):
    """absl::Base64Unescape, which TF Serving uses for {"b64": ...}: standard alphabet; ASCII white space anywhere
    is ignored; padding ('=' or '.') is optional, but if present must be complete. Raises ValueError."""
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("not ASCII") from None
    pad_at = min((i for i in (raw.find(b"="), raw.find(b".")) if i >= 0), default=len(raw))
    data = raw[:pad_at].translate(None, _ASCII_SPACE)
    tail = raw[pad_at:].translate(None, _ASCII_SPACE)
    if not _B64_DATA.fullmatch(data) or tail.strip(b"=.") or len(data) % 4 == 1:
        raise ValueError("not base64")
    expected = (4 - len(data) % 4) % 4
    if len(tail) not in (0, expected):
        raise ValueError("wrong padding")
    return binascii.a2b_base64(data + b"=" * expected)


def _json_snippet(value, limit=200):
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit] + "..."


def parse_json_body(body):
    """The request body as TF Serving's RapidJSON parse reads it: leading white space skipped, anything after the
    first complete value ignored, NaN/Infinity accepted; it must be an object. Errors are ClientError(400)."""
    if not body:
        raise ClientError("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ClientError(f"JSON Parse error: Invalid encoding in string. at offset: {error.start}") from None
    start = len(text) - len(text.lstrip(" \t\n\r"))
    if start == len(text):
        raise ClientError("JSON Parse error: The document is empty")
    try:
        value, _ = json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as error:
        raise ClientError(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
    except RecursionError:
        raise ClientError("JSON Parse error: the document is nested too deeply for this server") from None
    if not isinstance(value, dict):
        raise ClientError(f"JSON Value: {_json_snippet(value)} Is not object")
    return value


# --- one loaded version ------------------------------------------------------------------------------------------

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
    line = (useful or lines or ["prediction failed"])[0]
    if line.startswith("assertion failed: [") and line.endswith("]") and "] [" not in line:
        return line[len("assertion failed: ["):-1]  # a graph-side check: its message alone
    return line


def _error_code(error):
    """The TensorFlow error code name for an exception raised while loading (as TF Serving's status shows it)."""
    if isinstance(error, tf.errors.OpError) and 0 <= error.error_code < len(_ERROR_CODES):
        return _ERROR_CODES[error.error_code]
    if isinstance(error, ClientError):
        return "INVALID_ARGUMENT"
    if isinstance(error, FileNotFoundError) or "does not exist" in str(error):
        return "NOT_FOUND"
    if isinstance(error, DecodeError) or "Cannot parse file" in str(error):
        return "DATA_LOSS"  # what TF Serving's C++ loader reports for a saved_model.pb it cannot parse
    return "UNKNOWN"


class Servable:
    """One loaded version: the SavedModel's signatures, their inputs and definitions."""

    def __init__(self, name, version, export_dir):
        self.name, self.version, self.export_dir = name, version, export_dir
        if not any(os.path.isfile(os.path.join(export_dir, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            raise FileNotFoundError(
                f"Could not find SavedModel .pb or .pbtxt at supplied export directory path: {export_dir}")
        self.loaded = tf.saved_model.load(export_dir)
        self.signatures = dict(self.loaded.signatures)
        self.signature_defs = _signature_defs(export_dir)
        self.inputs = {name: fn.structured_input_signature[1] for name, fn in self.signatures.items()}

    def warmup_requests(self):
        """(signature_name, {input: ndarray}) of each record of the warm-up file, as TF Serving reads it."""
        path = os.path.join(self.export_dir, WARMUP_FILE)
        if not os.path.isfile(path):
            return []
        from tensorflow_serving.apis import prediction_log_pb2

        requests = []
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            if len(requests) >= MAX_WARMUP_RECORDS:
                raise ClientError(f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}")
            log = prediction_log_pb2.PredictionLog.FromString(record)
            kind = log.WhichOneof("log_type")
            if kind != "predict_log":
                raise ClientError(f"Unsupported log_type for warmup: {kind} (this server replays predict_log)")
            request = log.predict_log.request
            requests.append((request.model_spec.signature_name or "serving_default",
                             {key: tf.make_ndarray(value) for key, value in request.inputs.items()}))
        return requests


class ModelVersions:
    """TF Serving's version handling for one model: a file-system poller, the latest-version policy and the
    availability-preserving load/unload order, load retries, warm-up replay, and the status of every version."""

    def __init__(self, model_base_path, model_name, poll_wait_seconds=DEFAULT_POLL_WAIT_SECONDS,
                 max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_seconds=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS, warmup_iterations=1,
                 warmup=None):
        if poll_wait_seconds < 0:
            raise ValueError(f"file_system_poll_wait_seconds must be >= 0 (0: poll once), got {poll_wait_seconds}")
        self.base_path, self.name = model_base_path, model_name
        self.poll_wait_seconds = poll_wait_seconds
        self.max_num_load_retries = max(0, int(max_num_load_retries))
        self.load_retry_interval_seconds = max(0.0, float(load_retry_interval_seconds))
        self.warmup_iterations = max(1, int(warmup_iterations))
        self._warmup = warmup  # callable(servable, signature_name, {input: ndarray}) -> raises on failure
        self._lock = threading.Lock()
        self._available = {}  # version -> Servable
        self._states = {}  # version -> {"state", "error_code", "error_message"}: what the status API shows
        self._attempts = {}  # version -> (failed attempts, time of the next attempt) while it is retried
        self._failed = {}  # version -> its listing when its load failed for good: retried only if that changes
        self._fingerprints = {}  # version -> listing seen by the previous poll
        self._stop = threading.Event()
        self._thread = None

    # -- the file system --

    @staticmethod
    def _fingerprint(path):
        """A version directory's listing (relative path, size, mtime) or None when it has no saved_model.pb."""
        if not any(os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")):
            return None
        listing = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                full = os.path.join(root, name)
                try:
                    stat = os.stat(full)
                except OSError:
                    return None
                listing.append((os.path.relpath(full, path), stat.st_size, stat.st_mtime_ns))
        return tuple(listing)

    def _scan(self):
        """{version: directory} of the complete versions on disk: unchanged since the previous poll."""
        try:
            names = os.listdir(self.base_path)
        except OSError as error:
            logger.warning("cannot list the model base path %s: %s", self.base_path, error)
            return {}
        dirs = {}
        for name in sorted(names, reverse=True):  # "1" is preferred to "01" for the same version
            if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(self.base_path, name)):
                dirs[int(name)] = os.path.join(self.base_path, name)
        fingerprints = {version: self._fingerprint(path) for version, path in dirs.items()}
        stable = {version for version, fp in fingerprints.items()
                  if fp is not None and self._fingerprints.get(version) == fp}
        for version in [v for v in self._failed if v in stable and fingerprints[v] != self._failed[v]]:
            del self._failed[version]  # rewritten in place since it failed: try it again
        # A version being served (or already failed) only needs to still be there; a new one must have settled.
        known = set(self.available_versions) | set(self._failed)
        complete = {version: dirs[version] for version, fp in fingerprints.items()
                    if version in stable or (fp is not None and version in known)}
        self._fingerprints = fingerprints
        return complete

    # -- state --

    def _set_state(self, version, state, error_code="OK", error_message=""):
        with self._lock:
            self._states[version] = {"state": state, "error_code": error_code, "error_message": error_message}
        log = logger.warning if error_code != "OK" else logger.info
        log("%s version %d: %s%s", self.name, version, state,
            f" ({error_code}: {error_message})" if error_code != "OK" else "")

    def statuses(self, version=None):
        """TF Serving's model_version_status list (newest first), or None when nothing matches."""
        with self._lock:
            states = dict(self._states)
        if version is not None:
            states = {version: states[version]} if version in states else {}
        if not states:
            return None
        return [{"version": str(v), "state": s["state"],
                 "status": {"error_code": s["error_code"], "error_message": s["error_message"]}}
                for v, s in sorted(states.items(), reverse=True)]

    def get(self, version=None):
        """The servable for a request: a specific version, or the newest AVAILABLE one; None if there is none."""
        with self._lock:
            if version is None:
                return self._available[max(self._available)] if self._available else None
            return self._available.get(version)

    @property
    def available_versions(self):
        with self._lock:
            return sorted(self._available)

    # -- loading and unloading --

    def _load(self, version, path):
        self._set_state(version, "LOADING")
        started = time.monotonic()
        try:
            servable = Servable(self.name, version, path)
            requests = servable.warmup_requests()
            for signature_name, inputs in requests:
                for _ in range(self.warmup_iterations):
                    self._warmup(servable, signature_name, inputs)
        except Exception as error:  # noqa: BLE001 - any load failure is reported, never fatal
            return error
        with self._lock:
            self._available[version] = servable
            self._states[version] = {"state": "AVAILABLE", "error_code": "OK", "error_message": ""}
        logger.info("%s version %d: AVAILABLE (loaded from %s in %.2f s, %d warm-up request(s) replayed)",
                    self.name, version, path, time.monotonic() - started, len(requests) * self.warmup_iterations)
        return None

    def _unload(self, version):
        self._set_state(version, "UNLOADING")
        with self._lock:
            self._available.pop(version, None)  # requests in flight keep their reference until they finish
        gc.collect()
        self._set_state(version, "END")

    def step(self, complete):
        """One decision of the availability-preserving policy over the complete versions on disk; True if it
        acted (call again), False when there is nothing to do now."""
        aspired = max(complete) if complete else None  # the "latest 1" version policy
        for version in [v for v in self._failed if v not in complete]:
            del self._failed[version]  # a failed version that disappears is tried again if it comes back
        for version in list(self._attempts):
            if version != aspired:
                del self._attempts[version]
        available = self.available_versions
        unaspired = [v for v in available if v != aspired]
        aspired_ready = aspired in available
        if unaspired and (aspired is None or aspired_ready or len(unaspired) > 1):
            self._unload(min(unaspired))
            return True
        if aspired is None or aspired_ready or aspired in self._failed:
            return False
        failures, next_try = self._attempts.get(aspired, (0, 0.0))
        if time.monotonic() < next_try:
            return False
        error = self._load(aspired, complete[aspired])
        if error is None:
            self._attempts.pop(aspired, None)
            return True
        message = _first_line(error) if isinstance(error, tf.errors.OpError) else str(error)
        if failures < self.max_num_load_retries:
            self._attempts[aspired] = (failures + 1, time.monotonic() + self.load_retry_interval_seconds)
            logger.warning("%s version %d failed to load (%s); retry %d of %d in %.0f s", self.name, aspired,
                           message, failures + 1, self.max_num_load_retries, self.load_retry_interval_seconds)
            return False
        self._attempts.pop(aspired, None)
        self._failed[aspired] = self._fingerprints.get(aspired)
        self._set_state(aspired, "END", _error_code(error), message)
        return True

    def poll(self):
        """Scan the base path once and act until the policy has nothing more to do."""
        complete = self._scan()
        while self.step(complete):
            pass
        return complete

    def start(self, settle_seconds=None):
        """Load the initial version, as TF Serving does before it serves: waits for a complete version (two
        polls with the same listing), loads it; raises LoadError if that load fails. Then polls in the
        background every poll_wait_seconds (never, if 0)."""
        if not os.path.isdir(self.base_path):
            raise FileNotFoundError(f"model base path {self.base_path} does not exist")
        settle = settle_seconds if settle_seconds is not None else min(max(self.poll_wait_seconds, 0.2), 1.0)
        warned = False
        self._scan()  # the first listing: a version counts as complete when the next poll sees the same
        while not self._stop.is_set():
            time.sleep(settle)
            complete = self.poll()
            if self.available_versions:
                break
            if complete:
                newest = max(complete)
                state = self._states.get(newest, {})
                if state.get("state") == "END" and state.get("error_code") != "OK":
                    raise LoadError(f"{self.name} version {newest} failed to load: {state['error_code']}: "
                                    f"{state['error_message']}")
            elif not warned:
                logger.warning("No versions of servable %s found under base path %s. Did you forget to name "
                               "your leaf directory as a number (eg. '/1/')?", self.name, self.base_path)
                warned = True
            if not complete and self.poll_wait_seconds == 0:
                raise FileNotFoundError(f"no version under {self.base_path}: expected "
                                        "<model_base_path>/<version>/saved_model.pb")
        if self.poll_wait_seconds > 0:
            self._thread = threading.Thread(target=self._run, name="model-version-poller", daemon=True)
            self._thread.start()

    def _run(self):
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - keep polling whatever one poll did
                logger.exception("polling %s failed", self.base_path)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# --- the WSGI app -----------------------------------------------------------------------------------------------

class ModelServer:
    """TF Serving's REST API over the versions of one model (a WSGI app)."""

    def __init__(self, model_base_path, model_name=None, max_batch_size=DEFAULT_MAX_BATCH_SIZE,
                 max_request_bytes=DEFAULT_MAX_REQUEST_BYTES, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
                 file_system_poll_wait_seconds=DEFAULT_POLL_WAIT_SECONDS,
                 max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
                 load_retry_interval_seconds=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS,
                 num_request_iterations_for_warmup=0, enable_signature_method_name_check=False):
        model_base_path = os.path.abspath(model_base_path)
        for flag, value in (("max_batch_size", max_batch_size), ("max_request_bytes", max_request_bytes),
                            ("max_image_pixels", max_image_pixels)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{flag} must be a positive int, got {value!r}")
        self.model_name = model_name or os.path.basename(model_base_path.rstrip(os.sep))
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
            if not _API_PATH.fullmatch(path):
                raise ClientError(f"no such resource: {path} (expected /v1/models/<name>[...])", 404)
            if method == "OPTIONS":  # CORS preflight, as TF Serving answers it
                if re.search(r"https?://", request.headers.get("Origin", "")):
                    return Response(b"", status=200)
                raise ClientError("Origin header is missing in CORS preflight")
            if method == "POST":
                match = _PREDICT_PATH.fullmatch(path)
                if match and match.group(4) in ("predict", "classify", "regress"):
                    name, version, label = self._model_spec(match)
                    body = self._body(request)
                    if match.group(4) == "predict":
                        return _json(self._predict(name, version, label, body))
                    return _json(self._classify_or_regress(match.group(4), name, version, label, body))
            elif method == "GET":
                match = _STATUS_PATH.fullmatch(path)
                if match:
                    name, version, label = self._model_spec(match)
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

    @staticmethod
    def _model_spec(match):
        name = urllib.parse.unquote(match.group(1)) if match.group(1) else None
        version = None
        if match.group(2):
            version = int(match.group(2))
            if version >= 2**63:
                raise ClientError(f"Failed to convert version: {match.group(2)} to numeric.")
        label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
        return name, version, label

    def _body(self, request):
        length = request.content_length or 0
        if length > self.max_request_bytes:
            # The body was read and dropped as it came in (see _BoundedBodyParser): nothing is buffered.
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
        body = parse_json_body(body)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ClientError(f"JSON Value: {_json_snippet(signature_name)} 'signature_name' key must be a string "
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
            columns = self._rows_to_columns(body["instances"], specs)
        else:
            columns = self._columnar(body["inputs"], specs)
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
        outputs = {key: _to_json(key, value.numpy()) for key, value in sorted(outputs.items())}
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
            raise ClientError(_first_line(error)) from None

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
        body = parse_json_body(body)
        signature_name = body.get("signature_name", "")
        if not isinstance(signature_name, str):
            raise ClientError(f"JSON Value: {_json_snippet(signature_name)} 'signature_name' key must be a string "
                              "value.")
        if "context" in body and not isinstance(body["context"], dict):
            raise ClientError(f"Example must be JSON object but got JSON {_json_type(body['context'])}")
        examples = body.get("examples")
        if "examples" not in body:
            raise ClientError(f"JSON Value: {_json_snippet(body)} When method is {verb}, key 'examples' is "
                              "expected and was not found")
        if not isinstance(examples, list):
            raise ClientError(f"JSON Value: {_json_snippet(body)} Expecting 'examples' value to be an list/array")
        if not examples:
            raise ClientError(f"JSON Value: {_json_snippet(body)} 'examples' value is an empty array")
        for example in examples:
            if not isinstance(example, dict):
                raise ClientError(f"Example must be JSON object but got JSON {_json_type(example)}")
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
            items = [_decode_b64(name, i, item) for i, item in enumerate(value)]
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


def _json_type(value):
    return {dict: "Object", list: "Array", str: "String", bool: "True" if value else "False",
            type(None): "Null"}.get(type(value), "Number")


def _decode_b64(name, index, item):
    if isinstance(item, dict):
        if set(item) != {"b64"} or not isinstance(item["b64"], str):
            raise ClientError(f"input '{name}'[{index}] must be {{\"b64\": \"<base64 string>\"}}")
        try:
            return decode_base64(item["b64"])
        except (ValueError, binascii.Error):
            raise ClientError(f"input '{name}'[{index}]: Unable to base64 decode") from None
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


# --- request bodies over the limit: read and dropped, then a JSON 413 on a connection that stays usable ------------

class _DroppingBuffer(OverflowableBuffer):
    """Keeps a body up to `limit` bytes; past that (or from the start, when the declared length is over it) drops
    the data and only counts it, so a client sending a huge body is read to its end without the server storing it,
    and the answer (a JSON 413) comes on a connection that is not reset."""

    def __init__(self, overflow, limit, drop=False):
        super().__init__(overflow)
        self.limit, self.dropping, self.received = limit, drop, 0

    def __len__(self):
        return self.received if self.dropping else super().__len__()

    def append(self, s):
        self.received += len(s)
        if not self.dropping and self.received > self.limit:
            self.dropping = True
            super().close()
            self.buf, self.strbuf = None, b""
        if not self.dropping:
            super().append(s)

    def getfile(self):
        return io.BytesIO() if self.dropping else super().getfile()


def _channel_class(max_request_bytes):
    class BoundedBodyParser(HTTPRequestParser):
        def parse_header(self, header_plus):
            super().parse_header(header_plus)
            if self.body_rcv is None:
                return
            if self.content_length > max_request_bytes and self.expect_continue:
                # The client waits for "100 Continue" before sending the body: answer 413 now, it sends nothing.
                self.body_rcv, self.expect_continue, self.connection_close = None, False, True
                return
            self.body_rcv.buf = _DroppingBuffer(self.adj.inbuf_overflow, max_request_bytes,
                                                drop=self.content_length > max_request_bytes)

    class BoundedBodyChannel(HTTPChannel):
        parser_class = BoundedBodyParser

    return BoundedBodyChannel


def serve(model_base_path, model_name=None, host="127.0.0.1", port=8501, threads=4,
          max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
          max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS, file_system_poll_wait_seconds=DEFAULT_POLL_WAIT_SECONDS,
          max_num_load_retries=DEFAULT_MAX_NUM_LOAD_RETRIES,
          load_retry_interval_seconds=DEFAULT_LOAD_RETRY_INTERVAL_SECONDS, num_request_iterations_for_warmup=0,
          enable_signature_method_name_check=False, grace_seconds=10.0, ready_callback=None):
    """Load the newest version (after replaying its warm-up requests), then serve until SIGTERM/SIGINT, polling
    for new versions; on the signal stop accepting, finish in-flight requests (up to `grace_seconds`), exit.

    `ready_callback(host, port)` is called once the socket is listening (port 0 picks a free port).
    """
    app = ModelServer(model_base_path, model_name, max_batch_size=max_batch_size,
                      max_request_bytes=max_request_bytes, max_image_pixels=max_image_pixels,
                      file_system_poll_wait_seconds=file_system_poll_wait_seconds,
                      max_num_load_retries=max_num_load_retries,
                      load_retry_interval_seconds=load_retry_interval_seconds,
                      num_request_iterations_for_warmup=num_request_iterations_for_warmup,
                      enable_signature_method_name_check=enable_signature_method_name_check)
    stop = threading.Event()

    def request_stop(signum, _frame):
        logger.info("received signal %d: draining", signum)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app.start()
    except BaseException:
        app.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        raise
    socket_map = {}
    # waitress' own limit is out of the way: bodies over max_request_bytes are read and dropped by the channel's
    # parser and answered by the app with a JSON 413.
    server = waitress.create_server(app, map=socket_map, host=host, port=port, threads=threads,
                                    max_request_body_size=2**62, ident="keras-nfnet-serving")
    server.channel_class = _channel_class(max_request_bytes)
    bound_host, bound_port = server.effective_host, server.effective_port
    versions = ", ".join(map(str, app.versions.available_versions))
    print(f"serving {app.model_name} version {versions} at http://{bound_host}:{bound_port}/v1/models/"
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
        app.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"stopped serving {app.model_name}", flush=True)


def _pending_output(socket_map):
    """Whether any connection is still receiving a request, has requests queued, or has unsent output."""
    return any(getattr(channel, "request", None) is not None or getattr(channel, "requests", None)
               or getattr(channel, "total_outbufs_len", 0) for channel in list(socket_map.values()))
