"""The TF-Serving-compatible server, over real HTTP on 127.0.0.1, in a process where keras cannot be imported:
TF Serving's routes, base64 and JSON handling and error codes; limits (body, batch, decoded pixels); versions
polled from the base path (hot add, half-written, broken, removed) and warm-up replay before AVAILABLE."""
import base64
import concurrent.futures
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet import export
from keras_nfnet.data import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE = 32
CLASS_NAMES = ["zero", "one", "two", "three", "four", "five"]
MAX_BATCH = 8
MAX_BYTES = 1_200_000

# The server process blocks keras before TensorFlow is imported: serving needs TensorFlow only.
_SERVER = r"""
import runpy, sys
sys.modules["keras"] = None
sys.argv = ["serve.py"] + sys.argv[1:]
runpy.run_path("trainers/serve.py", run_name="__main__")
"""


def _tiny_model():
    keras.utils.set_random_seed(1)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, outputs)


def _image(seed, h=48, w=40):
    yy, xx = np.mgrid[0:h, 0:w]
    phase = np.random.default_rng(seed).uniform(0, 6, size=3)
    return (127.5 + 120 * np.sin(xx[..., None] / 5 + yy[..., None] / (3 + seed % 7) + phase)).astype(np.uint8)


def _png_b64(image):
    return base64.b64encode(tf.io.encode_png(image).numpy()).decode("ascii")


def _expected(model, images):
    batch = np.stack(
        [preprocess.normalize_image(preprocess.eval_image(tf.constant(im), IMAGE_SIZE)).numpy() for im in images]
    )
    logits = np.asarray(model.predict(batch, verbose=0), np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _png(image):
    return tf.io.encode_png(image).numpy()


class Server:
    def __init__(self, model_base_path, *flags):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, f"--model_base_path={model_base_path}", "--rest_api_port=0",
             f"--max_batch_size={MAX_BATCH}", f"--max_request_bytes={MAX_BYTES}",
             "--file_system_poll_wait_seconds=0.25", *flags],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        self.lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            match = re.search(r"serving \S+ version \d+ at http://127\.0\.0\.1:(\d+)/", line)
            if match:
                self.port = int(match.group(1))
                # Keep draining the pipe so the server never blocks on a full stdout.
                threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True).start()
                return
        self.process.kill()
        raise AssertionError("server did not start:\n" + "".join(self.lines))

    def memory_mb(self, field):
        """VmRSS or VmHWM (peak since the last reset_peak) of the server process, in MB."""
        with open(f"/proc/{self.process.pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    def reset_peak(self):
        with open(f"/proc/{self.process.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def status(self):
        status, body = self.request("GET", "/v1/models/digits")
        if status != 200:
            return {}
        return {int(v["version"]): (v["state"], v["status"]["error_code"]) for v in body["model_version_status"]}

    def wait_for(self, condition, what, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = condition()
            if value:
                return value
            assert self.process.poll() is None, "".join(self.lines)[-3000:]
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; status {self.status()}\n" + "".join(self.lines)[-3000:])

    def request(self, method, path, body=None, raw=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            assert response.getheader("Content-Type") == "application/json", payload[:200]
            return response.status, json.loads(payload)
        finally:
            conn.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def model_and_server(tmp_path_factory):
    model = _tiny_model()
    base = str(tmp_path_factory.mktemp("serving"))
    export.export_for_serving(model, base, "digits", class_names=CLASS_NAMES, image_size=IMAGE_SIZE, top_k=3,
                              warmup=False, verbose=False)
    server = Server(os.path.join(base, "digits"))
    yield model, server
    server.stop()
    assert server.process.returncode == 0, "".join(server.lines)[-3000:]


def test_status_and_metadata(model_and_server):
    _, server = model_and_server
    status, body = server.request("GET", "/v1/models/digits")
    assert status == 200
    assert body == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert server.request("GET", "/v1/models/digits/versions/1")[0] == 200
    status, body = server.request("GET", "/v1/models/digits/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": "digits", "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {"serving_default", "predict_images"}
    inputs = defs["serving_default"]["inputs"]["image_bytes"]
    assert inputs["dtype"] == "DT_STRING" and inputs["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert defs["serving_default"]["method_name"] == "tensorflow/serving/predict"
    assert set(defs["predict_images"]["outputs"]) == {"probabilities", "top_k_ids", "top_k_names"}


def test_predict_row_and_columnar(model_and_server):
    model, server = model_and_server
    images = [_image(i) for i in range(3)]
    expected = _expected(model, images)
    top = np.argsort(-expected, axis=-1, kind="stable")[:, :3]

    status, body = server.request("POST", "/v1/models/digits:predict",
                                  {"instances": [{"b64": _png_b64(im)} for im in images]})
    assert status == 200, body
    assert len(body["predictions"]) == 3
    for i, prediction in enumerate(body["predictions"]):
        np.testing.assert_allclose(prediction["probabilities"], expected[i], atol=1e-5, rtol=0)
        assert prediction["top_k_ids"] == top[i].tolist()
        assert prediction["top_k_names"] == [CLASS_NAMES[j] for j in top[i]]

    # Named-input rows, columnar "inputs", and an explicit version all give the same answer.
    status, rows = server.request("POST", "/v1/models/digits/versions/1:predict",
                                  {"signature_name": "serving_default",
                                   "instances": [{"image_bytes": {"b64": _png_b64(im)}} for im in images]})
    assert status == 200 and rows == body
    status, cols = server.request("POST", "/v1/models/digits:predict",
                                  {"inputs": {"image_bytes": [{"b64": _png_b64(im)} for im in images]}})
    assert status == 200
    np.testing.assert_allclose(cols["outputs"]["probabilities"], expected, atol=1e-5, rtol=0)
    assert cols["outputs"]["top_k_ids"] == top.tolist()


def test_predict_decoded_images_signature(model_and_server):
    model, server = model_and_server
    images = [_image(10 + i, 36, 36) for i in range(2)]
    status, body = server.request("POST", "/v1/models/digits:predict",
                                  {"signature_name": "predict_images", "instances": [im.tolist() for im in images]})
    assert status == 200, body
    got = np.array([p["probabilities"] for p in body["predictions"]])
    np.testing.assert_allclose(got, _expected(model, images), atol=1e-5, rtol=0)


def _bad_requests():
    png = _png_b64(_image(0))
    jpeg = tf.io.encode_jpeg(_image(0)).numpy()
    truncated = base64.b64encode(jpeg[: len(jpeg) // 2]).decode()
    text = base64.b64encode(b"hello, this is not an image").decode()
    big = base64.b64encode(os.urandom(MAX_BYTES)).decode()
    # One colour, 8000 x 8000: a ~190 KB PNG (250 KB in base64) that would decode to 192 MB.
    bomb = base64.b64encode(tf.io.encode_png(tf.zeros([8000, 8000, 3], tf.uint8)).numpy()).decode()
    predict = "/v1/models/digits:predict"
    ex = {"examples": [{"x": 1}]}
    return [
        ("bad json", "POST", predict, None, b'{"instances": [', 400, "JSON Parse error"),
        ("empty body", "POST", predict, None, b"", 400, "JSON Parse error: The document is empty"),
        ("json nested 100000 deep", "POST", predict, None, b"[" * 100_000 + b"]" * 100_000, 400,
         "JSON Parse error: the document is nested too deeply"),
        ("instances nested 100000 deep", "POST", predict, None,
         b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "JSON Parse error"),
        ("json not an object", "POST", predict, [1, 2], None, 400, r"JSON Value: \[1, 2\] Is not object"),
        ("neither instances nor inputs", "POST", predict, {"foo": 1}, None, 400, "exactly one of"),
        ("both instances and inputs", "POST", predict, {"instances": [], "inputs": []}, None, 400, "exactly one of"),
        ("empty batch", "POST", predict, {"instances": []}, None, 400, "empty batch"),
        ("bad base64", "POST", predict, {"instances": [{"b64": "@@not base64@@"}]}, None, 400,
         "Unable to base64 decode"),
        ("base64 with one char too many", "POST", predict, {"instances": [{"b64": png + "A"}]}, None, 400,
         "Unable to base64 decode"),
        ("b64 not a string", "POST", predict, {"instances": [{"b64": 12}]}, None, 400, "b64"),
        ("not an image", "POST", predict, {"instances": [{"b64": png}, {"b64": text}]}, None, 400,
         r"^image_bytes\[1\] is not a JPEG, PNG, GIF or BMP image$"),
        ("truncated jpeg", "POST", predict, {"instances": [{"b64": truncated}]}, None, 400, "Invalid JPEG data"),
        ("pixel bomb", "POST", predict, {"instances": [{"b64": png}, {"b64": bomb}]}, None, 400,
         r"input 'image_bytes'\[1\] declares 8000x8000 = 64000000 pixels, more than the limit of 16777216 pixels"),
        ("wrong model name", "POST", "/v1/models/cats:predict", {"instances": [{"b64": png}]}, None, 404,
         r"Servable not found for request: Latest\(cats\)"),
        ("wrong version", "POST", "/v1/models/digits/versions/7:predict", {"instances": [{"b64": png}]}, None,
         404, r"Servable not found for request: Specific\(digits, 7\)"),
        ("status of a wrong version", "GET", "/v1/models/digits/versions/7", None, None, 404,
         "Could not find version 7 of model digits"),
        ("status of a wrong model", "GET", "/v1/models/cats", None, None, 404, "Could not find any versions of model"),
        ("version too large", "GET", "/v1/models/digits/versions/99999999999999999999", None, None, 400,
         "Failed to convert version: 99999999999999999999 to numeric"),
        ("version label", "POST", "/v1/models/digits/labels/stable:predict", {"instances": [{"b64": png}]}, None,
         400, "Unrecognized servable version label: stable"),
        ("no model name", "GET", "/v1/models", None, None, 400, "Missing model name in request"),
        ("unknown signature", "POST", predict, {"signature_name": "nope", "instances": [{"b64": png}]}, None, 400,
         "not found in signature def"),
        ("wrong input name", "POST", predict, {"instances": [{"pixels": {"b64": png}}]}, None, 400,
         "expected \\['image_bytes'\\]"),
        ("batch too large", "POST", predict, {"instances": [{"b64": png}] * (MAX_BATCH + 1)}, None, 413,
         "exceeds this server's limit of 8"),
        ("body too large", "POST", predict, {"instances": [{"b64": big}]}, None, 413,
         rf"request body of \d+ bytes exceeds this server's limit of {MAX_BYTES} bytes"),
        ("pixels out of range", "POST", predict, {"signature_name": "predict_images",
                                                  "instances": [[[[300, 0, 0]] * 4] * 4]}, None, 400,
         r"integers in \[0, 255\]"),
        ("ragged images", "POST", predict, {"signature_name": "predict_images",
                                            "instances": [[[[1, 2, 3]] * 4] * 4, [[[1, 2, 3]] * 3] * 4]}, None, 400,
         "same shape"),
        ("empty image", "POST", predict, {"signature_name": "predict_images", "instances": [[]]}, None, 400,
         "has shape"),
        ("signature name not a string", "POST", predict, {"signature_name": ["x"], "instances": [{"b64": png}]},
         None, 400, "must be a string"),
        # TF Serving: the verb is matched case-sensitively after a case-insensitive path match -> malformed.
        ("upper-case verb", "POST", "/v1/models/digits:PREDICT", {"instances": [{"b64": png}]}, None, 400,
         r"^Malformed request: POST /v1/models/digits:PREDICT$"),
        ("unknown verb", "POST", "/v1/models/digits:explain", {"instances": [{"b64": png}]}, None, 400,
         "Malformed request"),
        ("GET on predict", "GET", predict, None, None, 400, r"^Malformed request: GET /v1/models/digits:predict$"),
        ("POST on status", "POST", "/v1/models/digits", {"instances": [{"b64": png}]}, None, 400,
         "Malformed request"),
        ("DELETE", "DELETE", "/v1/models/digits", None, None, 400, "Malformed request: DELETE"),
        ("classify", "POST", "/v1/models/digits:classify", ex, None, 400,
         r"^Expected one or two output Tensors, found 3 \(:classify needs a signature with method_name "
         r"tensorflow/serving/classify; \"serving_default\" has method_name tensorflow/serving/predict"),
        ("regress", "POST", "/v1/models/digits/versions/1:regress", ex, None, 400,
         r"^Expected one output Tensor\. \(:regress needs a signature with method_name tensorflow/serving/regress"),
        ("classify on another signature", "POST", "/v1/models/digits:classify",
         {"signature_name": "predict_images", **ex}, None, 400, "\"predict_images\" has method_name "
         "tensorflow/serving/predict"),
        ("classify without examples", "POST", "/v1/models/digits:classify", {"instances": []}, None, 400,
         "When method is classify, key 'examples' is expected and was not found"),
        ("classify, unknown signature", "POST", "/v1/models/digits:classify", {"signature_name": "x", **ex}, None,
         400, "No signature was found with the name: x"),
        ("classify, wrong model", "POST", "/v1/models/cats:regress", ex, None, 404, "Servable not found"),
        ("unknown path", "GET", "/v2/whatever", None, None, 404, "no such resource"),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda case: case[0])
def test_bad_input_gives_json_4xx_and_server_keeps_serving(model_and_server, case):
    _, server = model_and_server
    _, method, path, body, raw, want_status, pattern = case
    started = time.perf_counter()
    status, payload = server.request(method, path, body, raw=raw)
    assert time.perf_counter() - started < 10
    assert status == want_status, payload
    assert re.search(pattern, payload["error"]), payload["error"]
    assert server.request("GET", "/v1/models/digits")[0] == 200
    assert server.process.poll() is None


def test_requests_as_tf_serving_reads_them(model_and_server):
    """What TF Serving accepts is accepted: base64 with line breaks (MIME style) or without padding, a version
    written with leading zeros (/versions/01 is version 1), an upper-case path (only the verb is case-sensitive),
    anything after the JSON document (RapidJSON's stop-when-done)."""
    model, server = model_and_server
    # Two images whose PNG lengths are not multiples of 3, so their base64 ends in padding that can be dropped.
    images = [im for im in (_image(40 + i, 44 + i % 5, 37) for i in range(30)) if len(_png(im)) % 3][:2]
    expected = _expected(model, images)
    plain = [base64.b64encode(_png(im)).decode() for im in images]
    assert any(len(b) % 4 == 0 and b.endswith("=") for b in plain)  # padding that can be dropped
    variants = {
        "padded": plain,
        "MIME line breaks": [base64.encodebytes(_png(im)).decode() for im in images],
        "CRLF and spaces": ["\r\n ".join(b[i:i + 64] for i in range(0, len(b), 64)) for b in plain],
        "no padding": [b.rstrip("=") for b in plain],
    }
    assert "\n" in variants["MIME line breaks"][0]
    for name, encoded in variants.items():
        status, body = server.request("POST", "/v1/models/digits:predict",
                                      {"instances": [{"b64": b} for b in encoded]})
        assert status == 200, (name, body)
        got = np.array([p["probabilities"] for p in body["predictions"]])
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)
    instances = {"instances": [{"b64": b} for b in plain]}
    for path in ("/v1/models/digits/versions/01:predict", "/v1/models/digits/versions/0001:predict",
                 "/V1/MODELS/digits/VERSIONS/1:predict"):
        status, body = server.request("POST", path, instances)
        assert status == 200, (path, body)
    assert server.request("GET", "/v1/models/digits/versions/01")[1]["model_version_status"][0]["version"] == "1"
    status, body = server.request("GET", "/V1/Models/digits/versions/1/metadata")
    assert status == 200 and body["model_spec"]["version"] == "1"
    status, body = server.request("POST", "/v1/models/digits:predict", raw=json.dumps(instances).encode() + b" trailing")
    assert status == 200, body


def _raw_exchange(port, request_bytes, body_chunks=(), timeout=60):
    """Send a request by hand on one socket; returns (status, headers, body bytes, the socket)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(request_bytes)
    for chunk in body_chunks:
        sock.sendall(chunk)
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response.status, dict(response.getheaders()), response.read(), sock


def test_oversized_body_gets_json_413_on_a_connection_that_survives(model_and_server):
    """A 70 MiB body (limit here 1.2 MB) is read and dropped: the client sends all of it without a broken pipe or
    reset, gets a JSON 413, and the same keep-alive connection serves the next request. Chunked bodies likewise;
    with Expect: 100-continue the 413 comes before the body is sent. The server's memory does not grow by the
    body."""
    _, server = model_and_server
    big = b'{"instances": [{"b64": "' + b"QUFB" * (70 * 1024 * 1024 // 4) + b'"}]}'
    server.reset_peak()
    rss = server.memory_mb("VmRSS")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request("POST", "/v1/models/digits:predict", body=big, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        payload = json.loads(response.read())
        assert response.status == 413 and response.getheader("Content-Type") == "application/json"
        assert payload["error"].startswith(f"request body of {len(big)} bytes exceeds this server's limit of "
                                           f"{MAX_BYTES} bytes")
        assert response.getheader("Connection", "").lower() != "close"
        conn.request("GET", "/v1/models/digits")  # same connection
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["model_version_status"]
    finally:
        conn.close()
    assert server.memory_mb("VmHWM") - rss < 50, "the dropped body was buffered"

    chunks = [big[i:i + (1 << 20)] for i in range(0, 8 << 20, 1 << 20)]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    status, headers, body, sock = _raw_exchange(
        server.port, b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n", [chunked])
    sock.close()
    assert status == 413 and json.loads(body)["error"].startswith(f"request body of {8 << 20} bytes"), body

    status, headers, body, sock = _raw_exchange(
        server.port, b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Expect: 100-continue\r\nContent-Type: application/json\r\n\r\n" % len(big))
    sock.close()
    assert status == 413 and "exceeds this server's limit" in json.loads(body)["error"]


def test_pixel_bomb_costs_bounded_time_and_memory(model_and_server):
    """Four 8000x8000 PNGs in one 1 MB request (each would decode to 192 MB and take seconds to resize) are
    refused in well under a second, and the server's peak memory does not move."""
    _, server = model_and_server
    bomb = base64.b64encode(tf.io.encode_png(tf.zeros([8000, 8000, 3], tf.uint8)).numpy()).decode()
    server.reset_peak()
    rss = server.memory_mb("VmRSS")
    started = time.perf_counter()
    status, body = server.request("POST", "/v1/models/digits:predict", {"instances": [{"b64": bomb}] * 4})
    assert status == 400 and "more than the limit of 16777216 pixels" in body["error"], body
    elapsed = time.perf_counter() - started
    grew = server.memory_mb("VmHWM") - rss
    print(f"\n4 pixel bombs refused in {elapsed * 1000:.0f} ms; server peak RSS +{grew:.1f} MB")
    assert elapsed < 1 and grew < 50


def _export(model, base, version, warmup=True):
    return export.export_for_serving(model, base, "digits", version=version, class_names=CLASS_NAMES,
                                     image_size=IMAGE_SIZE, top_k=3, warmup=warmup, verbose=False)


def _other_model(seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(len(CLASS_NAMES), kernel_initializer=keras.initializers.RandomNormal(stddev=2.0))(x)
    return keras.Model(inputs, outputs)


def test_versions_are_polled_like_tf_serving(tmp_path):
    """One server through a version's life, as TF Serving's file-system source and availability-preserving policy
    handle it: a version copied in slowly is not loaded until complete; a new version is hot-added, served by
    default and the old one unloaded (END); a broken version is retried, then reported (END with its error) while
    the previous keeps serving; removed versions are unloaded, falling back to the newest left, then to none."""
    model_a, model_b = _tiny_model(), _other_model(7)
    base = str(tmp_path)
    path_1 = _export(model_a, base, 1)
    root = os.path.join(base, "digits")
    server = Server(root, "--max_num_load_retries=1", "--load_retry_interval_micros=500000")
    images = [_image(50), _image(51)]
    instances = {"instances": [{"b64": _png_b64(im)} for im in images]}
    expected_a, expected_b = _expected(model_a, images), _expected(model_b, images)
    assert np.abs(expected_a - expected_b).max() > 0.05

    def served(expected, path="/v1/models/digits:predict"):
        status, body = server.request("POST", path, instances)
        if status != 200:
            return False
        got = np.array([p["probabilities"] for p in body["predictions"]])
        return bool(np.abs(got - expected).max() < 1e-5)

    try:
        assert server.status() == {1: ("AVAILABLE", "OK")} and served(expected_a)

        # 1. half-written: version 2 is copied in file by file, saved_model.pb first and in pieces.
        target = os.path.join(root, "2")
        files = sorted((os.path.relpath(os.path.join(d, f), path_1) for d, _, fs in os.walk(path_1) for f in fs),
                       key=lambda rel: rel != "saved_model.pb")
        seen = set()
        for rel in files:
            os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
            data = open(os.path.join(path_1, rel), "rb").read()
            with open(os.path.join(target, rel), "wb") as f:
                for i in range(0, len(data), max(1, len(data) // 3)):
                    f.write(data[i:i + max(1, len(data) // 3)])
                    f.flush()
                    time.sleep(0.1)
                    seen |= set(server.status())
        assert 2 not in seen, "a half-written version was picked up"
        server.wait_for(lambda: server.status() == {2: ("AVAILABLE", "OK"), 1: ("END", "OK")}, "version 2")
        assert served(expected_a)

        # 2. hot add: version 3 (another model) is served by default once loaded; 2 is unloaded.
        _export(model_b, base, 3)
        server.wait_for(lambda: server.status().get(3) == ("AVAILABLE", "OK"), "version 3")
        server.wait_for(lambda: server.status().get(2) == ("END", "OK"), "version 2 unloaded")
        assert served(expected_b) and served(expected_b, "/v1/models/digits/versions/3:predict")
        status, body = server.request("POST", "/v1/models/digits/versions/2:predict", instances)
        assert status == 404 and "Specific(digits, 2)" in body["error"]
        # Touching a served version's files does not unload or reload it.
        os.utime(os.path.join(root, "3", "saved_model.pb"))
        time.sleep(1.0)
        assert server.status()[3] == ("AVAILABLE", "OK") and served(expected_b)

        # 3. broken version 4: retried once, then END with its error; version 3 keeps serving throughout.
        broken = os.path.join(root, ".tmp-broken")
        shutil.copytree(os.path.join(root, "3"), broken)
        with open(os.path.join(broken, "saved_model.pb"), "wb") as f:
            f.write(b"this is not a SavedModel proto")
        os.rename(broken, os.path.join(root, "4"))
        state = server.wait_for(lambda: server.status().get(4, ("",))[0] == "END" and server.status()[4],
                                "version 4 to fail")
        assert state[1] != "OK"
        status, body = server.request("GET", "/v1/models/digits/versions/4")
        failure = body["model_version_status"][0]
        assert failure["state"] == "END" and failure["status"]["error_message"], failure
        assert "retry 1 of 1" in "".join(server.lines)
        assert server.status()[3] == ("AVAILABLE", "OK") and served(expected_b)
        status, body = server.request("POST", "/v1/models/digits/versions/4:predict", instances)
        assert status == 404

        # 4. removal: 4 and 3 disappear -> 2 (model A) is the newest left: loaded, then 3 unloaded.
        shutil.rmtree(os.path.join(root, "4"))
        shutil.rmtree(os.path.join(root, "3"))
        server.wait_for(lambda: server.status().get(3) == ("END", "OK") and server.status().get(2) == (
            "AVAILABLE", "OK"), "fall back to version 2")
        assert served(expected_a)

        # 5. every version removed: nothing is served (404), status lists them all as END.
        shutil.rmtree(os.path.join(root, "2"))
        shutil.rmtree(os.path.join(root, "1"))
        server.wait_for(lambda: server.status().get(2) == ("END", "OK"), "version 2 unloaded")
        status, body = server.request("POST", "/v1/models/digits:predict", instances)
        assert status == 404 and "Servable not found for request: Latest(digits)" in body["error"]
        assert server.status()[4][0] == "END" and server.status()[4][1] != "OK"
    finally:
        server.stop()
    assert server.process.returncode == 0, "".join(server.lines)[-3000:]


def test_server_does_not_start_when_the_initial_version_fails(tmp_path):
    """As TF Serving: if the newest version cannot be loaded at start-up, the server exits with the error."""
    root = tmp_path / "digits" / "1"
    root.mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"not a SavedModel")
    result = subprocess.run(
        [sys.executable, "-c", _SERVER, f"--model_base_path={tmp_path / 'digits'}", "--rest_api_port=0",
         "--max_num_load_retries=0", "--file_system_poll_wait_seconds=0.2"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: digits version 1 failed to load: DATA_LOSS" in result.stderr, result.stderr[-2000:]


def _first_and_warm_latency(server, count=10):
    body = {"instances": [{"b64": _png_b64(_image(60))}]}
    timings = []
    for _ in range(count + 1):
        started = time.perf_counter()
        status, payload = server.request("POST", "/v1/models/digits:predict", body)
        timings.append(time.perf_counter() - started)
        assert status == 200, payload
    return timings[0], float(np.median(timings[1:]))


def test_warmup_is_replayed_before_available(tmp_path):
    """With the export's warm-up file, the first request after the server reports AVAILABLE is about as fast as
    the following ones (TF Serving replays it at load). Control: the same model exported without it pays the
    graph's first-run cost on the first request."""
    from keras_nfnet.models import NFNet

    keras.utils.set_random_seed(0)
    model = NFNet("tiny", num_classes=len(CLASS_NAMES))
    results = {}
    for warmup in (True, False):
        base = str(tmp_path / str(warmup))
        _export(model, base, 1, warmup=warmup)
        server = Server(os.path.join(base, "digits"))
        try:
            assert server.status() == {1: ("AVAILABLE", "OK")}
            results[warmup] = _first_and_warm_latency(server)
        finally:
            server.stop()
        if warmup:
            assert "2 warm-up request(s) replayed" in "".join(server.lines)
    (first, warm), (cold_first, cold_warm) = results[True], results[False]
    print(f"\nfirst request {first * 1000:.0f} ms, warm {warm * 1000:.0f} ms with the warm-up file; "
          f"without it: first {cold_first * 1000:.0f} ms, warm {cold_warm * 1000:.0f} ms")
    assert first < max(3 * warm, warm + 0.1), results
    assert cold_first > 3 * cold_warm and cold_first > 2 * first, results


def test_bounded_concurrent_load(model_and_server):
    """300 requests from 8 concurrent clients to 127.0.0.1: zero errors, every answer correct."""
    model, server = model_and_server
    images = [_image(20 + i) for i in range(4)]
    expected_top1 = np.argmax(_expected(model, images), axis=-1)
    bodies = [{"instances": [{"b64": _png_b64(im)}]} for im in images]

    def one(i):
        start = time.perf_counter()
        status, body = server.request("POST", "/v1/models/digits:predict", bodies[i % 4])
        return time.perf_counter() - start, status, body["predictions"][0]["top_k_ids"][0] if status == 200 else body

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(one, range(300), timeout=240))
    elapsed = time.perf_counter() - started
    errors = [r for r in results if r[1] != 200]
    assert not errors, errors[:3]
    assert all(r[2] == expected_top1[i % 4] for i, r in enumerate(results))
    latencies = np.array([r[0] for r in results]) * 1000
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99])
    print(f"\n300 requests, 8 clients: {300 / elapsed:.1f} req/s; latency ms p50 {p50:.1f} p90 {p90:.1f} "
          f"p99 {p99:.1f} max {latencies.max():.1f}")


def test_sigterm_finishes_in_flight_request(tmp_path):
    """SIGTERM while a request is half-received: it is still answered in full, then the server exits cleanly."""
    model = _tiny_model()
    export.export_for_serving(model, str(tmp_path), "slow", class_names=CLASS_NAMES, image_size=IMAGE_SIZE,
                              warmup=False, verbose=False)
    server = Server(str(tmp_path / "slow"))
    images = [_image(i) for i in range(4)]
    body = json.dumps({"instances": [{"b64": _png_b64(im)} for im in images]}).encode()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        conn.putrequest("POST", "/v1/models/slow:predict")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[: len(body) // 2])
        time.sleep(0.5)  # the server has accepted the connection and is reading the body
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.send(body[len(body) // 2:])
        response = conn.getresponse()
        raw = response.read()
        status, payload = response.status, json.loads(raw)
        conn.close()
        assert server.process.wait(30) == 0, "".join(server.lines)
    finally:
        server.stop()
    assert status == 200, payload
    got = np.array([p["probabilities"] for p in payload["predictions"]])
    np.testing.assert_allclose(got, _expected(model, images), atol=1e-5, rtol=0)
    output = "".join(server.lines)
    assert "draining" in output and "stopped serving slow" in output
    with pytest.raises(OSError):  # the listening socket is gone
        http.client.HTTPConnection("127.0.0.1", server.port, timeout=5).request("GET", "/v1/models/slow")


def test_query_client_script(model_and_server, tmp_path):
    """trainers/query.py, a standard-library client, gets the expected top classes for image files."""
    model, server = model_and_server
    images = [_image(30 + i) for i in range(2)]
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"img{i}.png"))
        tf.io.write_file(paths[-1], tf.io.encode_png(image))
    result = subprocess.run(
        [sys.executable, "trainers/query.py", f"--url=http://127.0.0.1:{server.port}/v1/models/digits", *paths],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": REPO})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("image ")]
    expected = _expected(model, images)
    for i, line in enumerate(lines):
        top = int(np.argmax(expected[i]))
        prefix = f"image {i} ({paths[i]}): {CLASS_NAMES[top]} "
        assert line.startswith(prefix), line
        assert float(line[len(prefix):].split(",")[0]) == pytest.approx(expected[i][top], abs=6e-4)
    assert len(lines) == 2
