"""TF Serving's REST API conventions, without the server: its URL patterns, `{"b64": ...}` and JSON as TF Serving
reads them, the row and columnar request formats, output tensors as JSON, and errors as `ClientError` (400 for
anything the request got wrong, 404 for an unknown model or version, 413 over this server's limits)."""
import base64
import binascii
import json
import re
import urllib.parse

import numpy as np

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# TF Serving's path patterns (http_rest_api_util.cc), matched against the raw (undecoded) path as RE2::FullMatch.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.ASCII)
PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE | re.ASCII)


class ClientError(Exception):
    """A request the client got wrong: answered with `status` and a JSON error, never a crash."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


def model_spec(match):
    """(name, version or None, label or None) from a PREDICT_PATH or STATUS_PATH match."""
    name = urllib.parse.unquote(match.group(1)) if match.group(1) else None
    version = None
    if match.group(2):
        version = int(match.group(2))
        if version >= 2**63:
            raise ClientError(f"Failed to convert version: {match.group(2)} to numeric.")
    label = urllib.parse.unquote(match.group(3)) if match.group(3) else None
    return name, version, label


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


def json_snippet(value, limit=200):
    """A JSON value as TF Serving quotes it in an error message, cut at `limit` characters."""
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
        raise ClientError(f"JSON Value: {json_snippet(value)} Is not object")
    return value


def first_line(error):
    """The useful part of a TF runtime error (its message without the graph node dump)."""
    message = getattr(error, "message", str(error))
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("[[", "Graph execution error", "Detected at node",
                                                             "<stack traces"))]
    line = (useful or lines or ["prediction failed"])[0]
    if line.startswith("assertion failed: [") and line.endswith("]") and "] [" not in line:
        return line[len("assertion failed: ["):-1]  # a graph-side check: its message alone
    return line


def json_type(value):
    """RapidJSON's name for a value's type, as TF Serving's messages give it."""
    return {dict: "Object", list: "Array", str: "String", bool: "True" if value else "False",
            type(None): "Null"}.get(type(value), "Number")


def rows_to_columns(instances, specs):
    """The row format ('instances') as {input name: [one value per example]}."""
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


def columnar(inputs, specs):
    """The columnar format ('inputs') as {input name: value}."""
    names = list(specs)
    if isinstance(inputs, dict) and "b64" not in inputs:
        if set(inputs) != set(names):
            raise ClientError(f"'inputs' has {sorted(inputs)}; expected {names}")
        return inputs
    if len(names) != 1:
        raise ClientError(f"'inputs' must be an object with the inputs {names}")
    return {names[0]: inputs}


def decode_b64_input(name, index, item):
    """One item of a string input: {"b64": ...} decoded, or a JSON string as UTF-8."""
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


def to_json(name, array):
    """Output tensor -> JSON value; strings as UTF-8 text, or base64 for names ending in `_bytes` (TF Serving)."""
    if array.dtype == object:
        def convert(item):
            if name.endswith("_bytes"):
                return {"b64": base64.b64encode(item).decode("ascii")}
            return item.decode("utf-8", errors="replace")
        return np.vectorize(convert, otypes=[object])(array).tolist() if array.size else array.tolist()
    return array.tolist()
