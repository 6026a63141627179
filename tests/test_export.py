"""SavedModel export: TF Serving layout, signatures, class-name asset, warm-up file, parity with Keras, a load in
a process that imports only TensorFlow, no XLA-only function (every signature runs with XLA compilation disabled as
tensorflow_model_server disables it), and image headers checked against a pixel limit before decoding."""
import io
import json
import os
import struct
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet import export, layers, serving
from keras_nfnet.data import preprocess

IMAGE_SIZE = 32
CLASS_NAMES = ["cat", "dog", "bird", "fish", "frog", "horse", "ship"]

# Runs in a fresh interpreter where keras (and so keras_nfnet) cannot be imported: the TF-only consumer.
_TF_ONLY_SCRIPT = r"""
import json, sys
sys.modules["keras"] = None  # importing TensorFlow imports keras when it is installed: block it
import numpy as np
import tensorflow as tf
export_dir, images_npz, out_npz = sys.argv[1:4]
loaded = tf.saved_model.load(export_dir)
data = np.load(images_npz, allow_pickle=True)
by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(list(data["encoded"])))
by_images = loaded.signatures["predict_images"](images=tf.constant(data["decoded"]))
try:
    loaded.signatures["serving_default"](image_bytes=tf.constant([data["encoded"][0], b"not an image"]))
    bad = "no error"
except tf.errors.InvalidArgumentError as error:
    bad = error.message
np.savez(out_npz, bytes_probs=by_bytes["probabilities"].numpy(), bytes_ids=by_bytes["top_k_ids"].numpy(),
         bytes_names=by_bytes["top_k_names"].numpy().astype(str), images_probs=by_images["probabilities"].numpy(),
         images_names=by_images["top_k_names"].numpy().astype(str), bad=bad)
loaded_keras = [m for m, mod in sys.modules.items() if mod is not None and m.split(".")[0] in ("keras", "keras_nfnet")]
print(json.dumps({"keras_modules": loaded_keras}))
"""


def _tiny_model(num_classes=len(CLASS_NAMES)):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="gelu")(inputs)
    x = keras.layers.Conv2D(8, 3, activation="gelu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    # Large logits so the probabilities are far from uniform and a wrong preprocessing would show.
    outputs = keras.layers.Dense(num_classes, kernel_initializer=keras.initializers.RandomNormal(stddev=3.0))(x)
    return keras.Model(inputs, outputs)


def _images(count=4, seed=0):
    rng = np.random.default_rng(seed)
    # Smooth images of different sizes (noise would make bicubic resizing dominate everything).
    images = []
    for i in range(count):
        h, w = 40 + 7 * i, 56 - 5 * i
        yy, xx = np.mgrid[0:h, 0:w]
        phase = rng.uniform(0, 6, size=3)
        img = 127.5 + 120 * np.sin(xx[..., None] / (4 + i) + yy[..., None] / 9 + phase)
        images.append(img.astype(np.uint8))
    return images


def _softmax(logits):
    logits = np.asarray(logits, np.float64)
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _keras_probabilities(model, images, direct=False):
    """The Keras model on the evaluation preprocessing of each decoded image, softmax in numpy (`direct`: call the
    model eagerly rather than through `predict`, so a `use_grouped_conv_form` scope applies)."""
    batch = np.stack(
        [preprocess.normalize_image(preprocess.eval_image(tf.constant(im), IMAGE_SIZE)).numpy() for im in images]
    )
    logits = model(batch, training=False) if direct else model.predict(batch, verbose=0)
    return _softmax(np.asarray(logits))


def _tiny_nfnet():
    from keras_nfnet.models import NFNet

    keras.utils.set_random_seed(0)
    model = NFNet("tiny", num_classes=len(CLASS_NAMES))
    # Trained-looking (large) classifier weights instead of the N(0, 0.01) init, so outputs are far from uniform.
    classifier = model.get_layer("classifier")
    kernel = np.random.default_rng(0).normal(0, 3.0, classifier.kernel.shape).astype("float32")
    classifier.kernel.assign(kernel)
    return model


@pytest.fixture(scope="module", params=["keras_cnn", "nfnet_tiny"])
def exported(tmp_path_factory, request):
    model = _tiny_model() if request.param == "keras_cnn" else _tiny_nfnet()
    base = str(tmp_path_factory.mktemp("serving"))
    path = export.export_for_serving(
        model, base, "animals", class_names=CLASS_NAMES, image_size=IMAGE_SIZE, top_k=3, verbose=False
    )
    return model, base, path


def test_layout_and_signatures(exported):
    _, base, path = exported
    assert path == os.path.join(base, "animals", "1")
    assert sorted(os.listdir(os.path.join(base, "animals"))) == ["1"]  # no temporary directory left behind
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert export.read_class_names(path) == CLASS_NAMES
    loaded = tf.saved_model.load(path)
    assert set(loaded.signatures) == {"serving_default", "predict_images"}
    default = loaded.signatures["serving_default"]
    assert list(default.structured_input_signature[1]) == ["image_bytes"]
    assert default.structured_input_signature[1]["image_bytes"].dtype == tf.string
    assert set(default.structured_outputs) == {"probabilities", "top_k_ids", "top_k_names"}
    images_sig = loaded.signatures["predict_images"].structured_input_signature[1]["images"]
    assert images_sig.dtype == tf.uint8 and images_sig.shape.as_list() == [None, None, None, 3]


def test_next_version_and_refuses_overwrite(tmp_path):
    model, base = _tiny_model(), str(tmp_path)
    for version in (1, 2):
        path = export.export_for_serving(
            model, base, "animals", class_names=CLASS_NAMES, image_size=IMAGE_SIZE, warmup=False, verbose=False
        )
        assert path == os.path.join(base, "animals", str(version))
    assert sorted(os.listdir(os.path.join(base, "animals"))) == ["1", "2"]
    with pytest.raises(ValueError, match="already exists"):
        export.export_for_serving(model, base, "animals", version=1, class_names=CLASS_NAMES, image_size=32)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"model_name": "a/b"}, "model_name"),
        ({"class_names": ["x", "y"]}, "2 class names for a model with 7 outputs"),
        ({"class_names": ["a\nb"] + CLASS_NAMES[1:]}, "single lines"),
        ({"image_size": None}, "pass image_size"),
        ({"version": 0}, "version must be a positive int"),
        ({"top_k": 0}, "top_k"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    args = dict(model_name="m", class_names=CLASS_NAMES, image_size=IMAGE_SIZE, warmup=False, verbose=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        export.export_for_serving(_tiny_model(), str(tmp_path), **args)


def test_tf_only_process_matches_keras(exported, tmp_path):
    model, _, path = exported
    images = _images()
    # PNG is lossless, so the decoded pixels are exactly `images`; JPEG would add its own error.
    encoded = [tf.io.encode_png(im).numpy() for im in images]
    same_size = [im[:40, :40] for im in images]
    np.savez(tmp_path / "in.npz", encoded=np.array(encoded, dtype=object), decoded=np.stack(same_size))
    result = subprocess.run(
        [sys.executable, "-c", _TF_ONLY_SCRIPT, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"keras_modules": []}
    out = np.load(tmp_path / "out.npz")

    expected = _keras_probabilities(model, images)
    # The comparison is informative: a different preprocessing (plain resize, no centre crop) moves the output
    # by far more than the tolerance.
    plain = np.stack([preprocess.normalize_image(preprocess.resize_bicubic(im, IMAGE_SIZE, IMAGE_SIZE)).numpy()
                      for im in images])
    assert np.abs(_softmax(model.predict(plain, verbose=0)) - expected).max() > 1e-3
    np.testing.assert_allclose(out["bytes_probs"], expected, atol=1e-5, rtol=0)
    expected_ids = np.argsort(-expected, axis=-1, kind="stable")[:, :3]
    np.testing.assert_array_equal(out["bytes_ids"], expected_ids)
    np.testing.assert_array_equal(out["bytes_names"], np.array(CLASS_NAMES)[expected_ids])

    np.testing.assert_allclose(out["images_probs"], _keras_probabilities(model, same_size), atol=1e-5, rtol=0)
    assert "assertion failed: [image_bytes[1] is not a JPEG, PNG, GIF or BMP image]" in str(out["bad"])


def test_jpeg_bytes_match_decoded_jpeg(exported):
    """JPEG input goes through the same decoder as evaluation: equal to the Keras model on the decoded JPEG."""
    model, _, path = exported
    loaded = tf.saved_model.load(path)
    jpegs = [tf.io.encode_jpeg(im, quality=90).numpy() for im in _images(2, seed=1)]
    decoded = [tf.io.decode_jpeg(j).numpy() for j in jpegs]
    got = loaded.signatures["serving_default"](image_bytes=tf.constant(jpegs))["probabilities"].numpy()
    np.testing.assert_allclose(got, _keras_probabilities(model, decoded), atol=1e-5, rtol=0)


def test_empty_batch_is_a_clear_error(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_bytes is empty"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([], dtype=tf.string))


def test_truncated_jpeg_is_a_clear_error(exported):
    _, _, path = exported
    loaded = tf.saved_model.load(path)
    jpeg = tf.io.encode_jpeg(_images(1)[0]).numpy()
    with pytest.raises(tf.errors.InvalidArgumentError, match="Invalid JPEG data"):
        loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg, jpeg[: len(jpeg) // 3]]))


def test_warmup_requests_replay(exported):
    """One warm-up request per signature (TF Serving replays them before AVAILABLE, so both graphs are warm)."""
    from tensorflow_serving.apis import prediction_log_pb2  # tensorflow-serving-api

    _, _, path = exported
    records = list(tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE)).as_numpy_iterator())
    requests = [prediction_log_pb2.PredictionLog.FromString(r).predict_log.request for r in records]
    assert [r.model_spec.signature_name for r in requests] == ["serving_default", "predict_images"]
    assert all(r.model_spec.name == "animals" for r in requests)
    image_bytes = tf.make_ndarray(requests[0].inputs["image_bytes"])
    assert image_bytes.shape == (1,) and image_bytes[0][:3] == b"\xff\xd8\xff"
    assert tf.make_ndarray(requests[1].inputs["images"]).shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)
    # TF Serving runs each warm-up request through its signature: each must succeed.
    loaded = tf.saved_model.load(path)
    for request in requests:
        inputs = {key: tf.constant(tf.make_ndarray(value)) for key, value in request.inputs.items()}
        out = loaded.signatures[request.model_spec.signature_name](**inputs)
        assert out["probabilities"].shape == (1, len(CLASS_NAMES))


# --- no XLA-only function --------------------------------------------------------------------------------------------

def xla_must_compile(export_dir):
    """Functions (and call nodes) of a SavedModel's function library that carry _XlaMustCompile=True."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    found = []
    for graph in (meta.graph_def for meta in proto.meta_graphs):
        found += [f"node {n.name}" for n in graph.node if n.attr["_XlaMustCompile"].b]
        for function in graph.library.function:
            if function.attr["_XlaMustCompile"].b:
                found.append(f"function {function.signature.name}")
            found += [f"node {function.signature.name}/{n.name}" for n in function.node_def
                      if n.attr["_XlaMustCompile"].b]
    return found


def test_no_xla_only_function(exported):
    _, _, path = exported
    assert xla_must_compile(path) == []


# Runs every signature the way tensorflow_model_server would: TensorFlow only, XLA compilation switched off by the
# same C++ call the server makes at start-up (tensorflow::DisableXlaCompilation), the warm-up records replayed as
# at load, then both signatures on real inputs.
_NO_XLA_SCRIPT = r"""
import ctypes, json, os, sys
sys.modules["keras"] = None
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2
export_dir, images_npz, out_npz = sys.argv[1:4]
switched = []
for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
    path = os.path.join(os.path.dirname(tf.__file__), name)
    if os.path.exists(path):
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        if hasattr(lib, "_ZN10tensorflow21DisableXlaCompilationEv"):
            lib._ZN10tensorflow21DisableXlaCompilationEv()
            switched.append(name)
            break
assert switched, "tensorflow::DisableXlaCompilation not found"
loaded = tf.saved_model.load(export_dir)
stage = "warm-up"
try:
    warmup = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    for record in tf.data.TFRecordDataset(warmup).as_numpy_iterator():
        request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
        loaded.signatures[request.model_spec.signature_name](
            **{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
    data = np.load(images_npz, allow_pickle=True)
    stage = "serving_default"
    by_bytes = loaded.signatures["serving_default"](image_bytes=tf.constant(list(data["encoded"])))
    stage = "predict_images"
    by_images = loaded.signatures["predict_images"](images=tf.constant(data["decoded"]))
except tf.errors.OpError as error:
    print(json.dumps({"switched": switched, "failed": stage, "error": error.message[:2000]}))
    sys.exit(3)
np.savez(out_npz, bytes_probs=by_bytes["probabilities"].numpy(), images_probs=by_images["probabilities"].numpy())
print(json.dumps({"switched": switched, "signatures": sorted(loaded.signatures)}))
"""


def _nfnet(variant):
    from keras_nfnet.models import NFNet

    keras.utils.set_random_seed(0)
    model = NFNet(variant, num_classes=len(CLASS_NAMES))
    classifier = model.get_layer("classifier")
    classifier.kernel.assign(np.random.default_rng(0).normal(0, 3.0, classifier.kernel.shape).astype("float32"))
    return model


def _run_without_xla(path, tmp_path, images):
    encoded = [tf.io.encode_png(im).numpy() for im in images]
    np.savez(tmp_path / "in.npz", encoded=np.array(encoded, dtype=object),
             decoded=np.stack([im[:40, :40] for im in images]))
    result = subprocess.run(
        [sys.executable, "-c", _NO_XLA_SCRIPT, path, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    lines = result.stdout.strip().splitlines()
    return result.returncode, (json.loads(lines[-1]) if lines else {"stderr": result.stderr[-3000:]})


@pytest.mark.parametrize("variant", ["tiny", "S1"])
def test_every_signature_runs_with_xla_disabled(tmp_path, monkeypatch, variant):
    """A grouped-conv NFNet's export runs where XLA is off (as in tensorflow_model_server), and equals the Keras
    model (grouped convolutions in their native form) within 1e-5. Control: the same model exported with the
    native form carries XLA-only functions and fails in the same harness, so the harness does switch XLA off."""
    model = _nfnet(variant)
    groups = [layer.groups for layer in model._flatten_layers() if getattr(layer, "groups", 1) > 1
              and getattr(layer, "kernel", None) is not None and layer.kernel.shape[2] > 1]
    assert groups, "the model must have grouped (not depthwise) convolutions"
    images = _images()
    with monkeypatch.context() as patch:
        patch.setattr(export, "GROUPED_CONV_FORM", "native")
        control = export.export_for_serving(model, str(tmp_path / "native"), "m", class_names=CLASS_NAMES,
                                            image_size=IMAGE_SIZE, verbose=False)
    assert xla_must_compile(control), "control: the native form should carry _XlaMustCompile functions"
    code, report = _run_without_xla(control, tmp_path, images)
    assert code == 3, report
    assert report["failed"] == "warm-up" and "XLA compilation disabled" in report["error"], report

    path = export.export_for_serving(model, str(tmp_path / "split"), "m", class_names=CLASS_NAMES,
                                     image_size=IMAGE_SIZE, verbose=False)
    assert xla_must_compile(path) == []
    code, report = _run_without_xla(path, tmp_path, images)
    assert code == 0, report
    assert report["signatures"] == ["predict_images", "serving_default"] and report["switched"], report
    out = np.load(tmp_path / "out.npz")
    with layers.use_grouped_conv_form("native"):
        expected = _keras_probabilities(model, images, direct=True)
        expected_images = _keras_probabilities(model, [im[:40, :40] for im in images], direct=True)
    np.testing.assert_allclose(out["bytes_probs"], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["images_probs"], expected_images, atol=1e-5, rtol=0)


# --- image headers and the pixel limit ------------------------------------------------------------------------------

def _encode(fmt, image, **kwargs):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _gif_parts(width, height, colour=1):
    """(header with its colour table, one image block: descriptor + LZW data sub-blocks) of a one-colour frame."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("P", (width, height), colour).save(buffer, "GIF")
    data = buffer.getvalue()
    flags = data[10]
    start = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    while data[start] == 0x21:  # skip extensions PIL may write
        p = start + 2
        while data[p]:
            p += data[p] + 1
        start = p + 1
    assert data[start] == 0x2C
    p = start + 10 + 1
    while data[p]:
        p += data[p] + 1
    return data[:start], data[start:p + 1]


def _rechunk(block, size):
    """The same image block with its LZW data cut into sub-blocks of `size` bytes."""
    head, p, payload = block[:11], 11, b""
    while block[p]:
        payload += block[p + 1:p + 1 + block[p]]
        p += block[p] + 1
    chunks = [payload[i:i + size] for i in range(0, len(payload), size)]
    return head + b"".join(bytes([len(c)]) + c for c in chunks) + b"\x00"


def _gif(frames, screen=None, chunk=None, comments=0):
    header, _ = _gif_parts(*frames[0])
    if screen is not None:
        header = header[:6] + struct.pack("<HH", *screen) + header[10:]
    comment = b"\x21\xfe\x05hello\x00"
    body = comment * comments
    for width, height in frames:
        block = _gif_parts(width, height)[1]
        body += _rechunk(block, chunk) if chunk else block
    return header + body + b";"


def _header_cases():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (21, 37, 3), dtype=np.uint8)
    bmp = _encode("BMP", photo)
    top_down = bmp[:22] + struct.pack("<i", -21) + bmp[26:]  # negative height: rows stored top to bottom
    return {
        "jpeg": (_encode("JPEG", photo), (37, 21, 777, 0)),
        "jpeg progressive with exif": (_encode("JPEG", photo, progressive=True, exif=b"Exif\x00\x00" + b"\x00" * 40),
                                       (37, 21, 777, 0)),
        "png": (_encode("PNG", photo), (37, 21, 777, 0)),
        "bmp": (bmp, (37, 21, 777, 0)),
        "bmp top-down": (top_down, (37, 21, 777, 0)),
        "gif": (_gif([(50, 40)]), (50, 40, 2000, 0)),
        "gif 3 frames and comments": (_gif([(30, 20)] * 3, comments=4), (30, 20, 1800, 0)),
        "gif frame larger than its screen": (_gif([(3000, 2000)], screen=(10, 10)), (3000, 2000, 6_000_000, 0)),
        "gif with 1-byte sub-blocks": (_gif([(64, 64)] * 2, chunk=1), (64, 64, 8192, 0)),
        "gif truncated": (_gif([(64, 64)] * 2)[:-40], (64, 64, 8192, 0)),
        "gif with too many blocks": (_gif([(8, 8)], comments=export.MAX_GIF_BLOCKS), None),
    }


def test_declared_image_size_graph_and_server_agree():
    """The SavedModel's header reader (TF ops) and the server's (Python) give the same sizes, and the true ones:
    for single-frame images the decoder's own output shape."""
    graph = tf.function(export.declared_image_size, input_signature=[tf.TensorSpec([], tf.string)])
    assert serving.MAX_GIF_BLOCKS == export.MAX_GIF_BLOCKS
    assert serving.DEFAULT_MAX_IMAGE_PIXELS == export.DEFAULT_MAX_IMAGE_PIXELS
    for name, (data, want) in _header_cases().items():
        got = tuple(int(v) for v in graph(data).numpy())
        python = serving.declared_image_size(data)
        assert got == tuple(int(v) for v in python), (name, got, python)
        if want is None:
            assert got[3] == 1, (name, got)
            continue
        assert got == want, (name, got)
        if "frames" not in name and "truncated" not in name and "sub-blocks" not in name:
            decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
            assert tuple(decoded.shape[:2]) == (want[1], want[0]), name


_BOMB_SCRIPT = r"""
import json, sys, time
sys.modules["keras"] = None
import numpy as np
import tensorflow as tf
export_dir, bomb_path, small_path = sys.argv[1:4]
bomb, small = open(bomb_path, "rb").read(), open(small_path, "rb").read()
fn = tf.saved_model.load(export_dir).signatures["serving_default"]
fn(image_bytes=tf.constant([small]))  # warm: graph built, kernels initialised
def peak():  # the peak RSS since the last reset (VmHWM), then reset it to the current RSS
    with open("/proc/self/status") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return hwm
def current():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024
peak()
before, start = current(), time.perf_counter()
try:
    fn(image_bytes=tf.constant([small, bomb, small]))
    error = None
except tf.errors.InvalidArgumentError as e:
    error = e.message
seconds, grew = time.perf_counter() - start, peak() - before
before, start = current(), time.perf_counter()
shape = tf.io.decode_image(bomb, channels=3).shape  # control: what decoding it would have cost
print(json.dumps({"error": error, "seconds": seconds, "grew_mb": grew, "shape": list(shape),
                  "decode_seconds": time.perf_counter() - start, "decode_grew_mb": peak() - before}))
"""


def test_pixel_bomb_is_refused_before_decoding(exported, tmp_path):
    """An 8000x8000 one-colour PNG (about 200 KB) is refused by the SavedModel in milliseconds with no memory
    growth; decoding it (the control) costs 192 MB and far more time."""
    _, _, path = exported
    bomb = _encode("PNG", np.zeros((8000, 8000, 3), np.uint8))
    (tmp_path / "bomb.png").write_bytes(bomb)
    (tmp_path / "small.png").write_bytes(_encode("PNG", _images(1)[0]))
    result = subprocess.run([sys.executable, "-c", _BOMB_SCRIPT, path, str(tmp_path / "bomb.png"),
                             str(tmp_path / "small.png")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(f"\npixel bomb ({len(bomb)} bytes): refused in {report['seconds'] * 1000:.1f} ms, peak RSS "
          f"+{report['grew_mb']:.0f} MB; decoding it: {report['decode_seconds']:.2f} s, +{report['decode_grew_mb']:.0f} MB")
    assert ("image_bytes[1] declares 8000x8000 = 64000000 pixels, more than the limit of 16777216 pixels; "
            "not decoded") in report["error"]
    assert report["seconds"] < 1.0 and report["grew_mb"] < 20, report
    assert report["shape"] == [8000, 8000, 3] and report["decode_grew_mb"] > 150, report


def test_max_image_pixels_is_the_export_argument(tmp_path):
    model = _tiny_model()
    path = export.export_for_serving(model, str(tmp_path), "m", class_names=CLASS_NAMES, image_size=IMAGE_SIZE,
                                     warmup=False, verbose=False, max_image_pixels=40 * 56)
    fn = tf.saved_model.load(path).signatures["serving_default"]
    ok, big = _images(1)[0], np.zeros((40, 57, 3), np.uint8)
    assert fn(image_bytes=tf.constant([_encode("PNG", ok)]))["probabilities"].shape == (1, len(CLASS_NAMES))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image_bytes\[0\] declares 57x40 = 2280 pixels, "
                                                             r"more than the limit of 2240 pixels"):
        fn(image_bytes=tf.constant([_encode("JPEG", big)]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than 20000 blocks"):
        fn(image_bytes=tf.constant([_gif([(8, 8)], comments=export.MAX_GIF_BLOCKS)]))
    with pytest.raises(ValueError, match="max_image_pixels"):
        export.export_for_serving(model, str(tmp_path), "m", image_size=IMAGE_SIZE, class_names=CLASS_NAMES,
                                  max_image_pixels=0)
