"""The TF-Serving-compatible server, over real HTTP on 127.0.0.1, in a process where keras cannot be imported."""
import base64
import concurrent.futures
import http.client
import json
import os
import re
import signal
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
MAX_BYTES = 200_000

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


class Server:
    def __init__(self, model_base_path, *flags):
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SERVER, f"--model_base_path={model_base_path}", "--rest_api_port=0",
             f"--max_batch_size={MAX_BATCH}", f"--max_request_bytes={MAX_BYTES}", *flags],
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
    predict = "/v1/models/digits:predict"
    return [
        ("bad json", "POST", predict, None, b'{"instances": [', 400, "not valid JSON"),
        ("json not an object", "POST", predict, [1, 2], None, 400, "JSON object"),
        ("neither instances nor inputs", "POST", predict, {"foo": 1}, None, 400, "exactly one of"),
        ("both instances and inputs", "POST", predict, {"instances": [], "inputs": []}, None, 400, "exactly one of"),
        ("empty batch", "POST", predict, {"instances": []}, None, 400, "empty batch"),
        ("bad base64", "POST", predict, {"instances": [{"b64": "@@not base64@@"}]}, None, 400, "not valid base64"),
        ("b64 not a string", "POST", predict, {"instances": [{"b64": 12}]}, None, 400, "b64"),
        ("not an image", "POST", predict, {"instances": [{"b64": png}, {"b64": text}]}, None, 400,
         r"not a JPEG, PNG, GIF or BMP image; first bad index i =\] \[1\]"),
        ("truncated jpeg", "POST", predict, {"instances": [{"b64": truncated}]}, None, 400, "Invalid JPEG data"),
        ("wrong model name", "POST", "/v1/models/cats:predict", {"instances": [{"b64": png}]}, None, 404,
         "Servable not found"),
        ("wrong version", "GET", "/v1/models/digits/versions/7", None, None, 404, "available version: 1"),
        ("unknown signature", "POST", predict, {"signature_name": "nope", "instances": [{"b64": png}]}, None, 400,
         "not found in signature def"),
        ("wrong input name", "POST", predict, {"instances": [{"pixels": {"b64": png}}]}, None, 400,
         "expected \\['image_bytes'\\]"),
        ("batch too large", "POST", predict, {"instances": [{"b64": png}] * (MAX_BATCH + 1)}, None, 413,
         "exceeds this server's limit of 8"),
        ("body too large", "POST", predict, {"instances": [{"b64": big}]}, None, 413, ""),
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
        ("GET on predict", "GET", predict, None, None, 405, "POST"),
        ("unknown path", "GET", "/v2/whatever", None, None, 404, "no such resource"),
    ]


@pytest.mark.parametrize("case", _bad_requests(), ids=lambda case: case[0])
def test_bad_input_gives_json_4xx_and_server_keeps_serving(model_and_server, case):
    _, server = model_and_server
    _, method, path, body, raw, want_status, pattern = case
    status, payload = server.request(method, path, body, raw=raw)
    assert status == want_status, payload
    assert re.search(pattern, payload["error"]), payload["error"]
    assert server.request("GET", "/v1/models/digits")[0] == 200
    assert server.process.poll() is None


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
