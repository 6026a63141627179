"""The versions of one model, handled as TF Serving's file-system source and availability-preserving policy handle
them: the base path is polled every `file_system_poll_wait_seconds`; the newest complete version is loaded (its
warm-up requests, `assets.extra/tf_serving_warmup_requests`, are replayed before it is AVAILABLE) and becomes the
one served by default, then older ones are unloaded; a version that fails to load is reported (state END with its
error, as in TF Serving's status API) while the previous one keeps serving; a version whose directory disappears
is unloaded. A directory counts as complete once it has saved_model.pb and its file listing (names, sizes, times)
was the same in two polls in a row, so a version being copied in is not loaded half-written.

The base path may be in a bucket (`gs://...`, keras_nfnet.storage), as TF Serving's may: there a version is
complete once its saved_model.pb object exists (keras_nfnet.export writes it last), and it is downloaded to a
local directory to be loaded.
"""
import gc
import logging
import os
import threading
import time

import tensorflow as tf
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from keras_nfnet import compat, storage
from keras_nfnet.serving.rest_api import ClientError, first_line

logger = logging.getLogger("keras_nfnet.serving")

# TF Serving's defaults.
DEFAULT_POLL_WAIT_SECONDS = 1.0
DEFAULT_MAX_NUM_LOAD_RETRIES = 5
DEFAULT_LOAD_RETRY_INTERVAL_SECONDS = 60.0
MAX_WARMUP_RECORDS = 1000
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# tensorflow/core/protobuf/error_codes.proto, by number.
_ERROR_CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")


class LoadError(ValueError):
    """The initial version failed to load: the server does not start (as TF Serving)."""


def _signature_defs(export_dir):
    """The SignatureDef map from saved_model.pb as TF Serving prints it in JSON (proto field names)."""
    proto = compat.saved_model_proto()
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
        if storage.is_remote(path):  # objects appear whole, and saved_model.pb is the last one written
            pb = storage.join(path, "saved_model.pb")
            return (("saved_model.pb", storage.version(pb)),) if storage.exists(pb) else None
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
            names = storage.listdir(self.base_path)
        except OSError as error:
            logger.warning("cannot list the model base path %s: %s", self.base_path, error)
            return {}
        dirs = {}
        for name in sorted(names, reverse=True):  # "1" is preferred to "01" for the same version
            if name.isascii() and name.isdigit() and storage.isdir(storage.join(self.base_path, name)):
                dirs[int(name)] = storage.join(self.base_path, name)
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
            servable = Servable(self.name, version, storage.fetch_dir(path))  # a local copy of a bucket's
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
        message = first_line(error) if isinstance(error, tf.errors.OpError) else str(error)
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
        if not storage.isdir(self.base_path):
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

