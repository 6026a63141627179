"""SavedModel export: TF Serving layout, signatures, class-name asset, warm-up file, parity with Keras, and a
load in a process that imports only TensorFlow."""
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet import export
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


def _keras_probabilities(model, images):
    """The Keras model on the evaluation preprocessing of each decoded image, softmax in numpy."""
    batch = np.stack(
        [preprocess.normalize_image(preprocess.eval_image(tf.constant(im), IMAGE_SIZE)).numpy() for im in images]
    )
    return _softmax(model.predict(batch, verbose=0))


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
    assert "image_bytes[i] is not a JPEG, PNG, GIF or BMP image; first bad index i =] [1]" in str(out["bad"])


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
    from tensorflow_serving.apis import prediction_log_pb2  # tensorflow-serving-api

    _, _, path = exported
    records = list(tf.data.TFRecordDataset(os.path.join(path, export.WARMUP_FILE)).as_numpy_iterator())
    assert len(records) == 1
    log = prediction_log_pb2.PredictionLog.FromString(records[0])
    request = log.predict_log.request
    assert request.model_spec.name == "animals"
    assert request.model_spec.signature_name == "serving_default"
    image_bytes = tf.make_ndarray(request.inputs["image_bytes"])
    assert image_bytes.shape == (1,) and image_bytes[0][:3] == b"\xff\xd8\xff"
    # TF Serving runs each warm-up request through the signature: it must succeed.
    loaded = tf.saved_model.load(path)
    out = loaded.signatures[request.model_spec.signature_name](image_bytes=tf.constant(image_bytes))
    assert out["probabilities"].shape == (1, len(CLASS_NAMES))
