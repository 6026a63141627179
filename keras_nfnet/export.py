"""SavedModel export for TensorFlow Serving.

`export_for_serving` writes `<base_dir>/<model_name>/<version>/`, the layout TF Serving's `--model_base_path`
expects, with two signatures that both run the evaluation preprocessing of `keras_nfnet.data.preprocess` inside
the graph (so a served prediction equals an evaluation-time prediction):

- `serving_default`: `image_bytes` (string [batch], JPEG/PNG/GIF/BMP) -> `probabilities` (float32 [batch, classes]),
  `top_k_ids` (int32 [batch, k]), `top_k_names` (string [batch, k]);
- `predict_images`: `images` (uint8 [batch, height, width, 3], RGB) -> the same outputs.

Class names travel as the asset `assets/class_names.txt` (one per line, line i = class i) read by a lookup table,
and an optional warm-up file `assets.extra/tf_serving_warmup_requests` (TF Serving's PredictionLog TFRecord)
lets TF Serving run the graph once before it reports the model AVAILABLE. A version directory is written under a
temporary name and renamed into place, so a server watching the base path never sees a half-written version.
"""
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_nfnet.data import preprocess

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
CLASS_NAMES_ASSET = "class_names.txt"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")

# Leading bytes of the formats `tf.io.decode_image` accepts. Checked first so that a batch holding something
# else fails with a message naming the item, rather than the decoder's generic error.
_MAGIC = ((b"\xff\xd8\xff", 3), (b"\x89PNG", 4), (b"GIF8", 4), (b"BM", 2))


def next_version(model_dir):
    """1 + the largest numeric version under `model_dir` (1 when there is none), as TF Serving numbers them."""
    if not os.path.isdir(model_dir):
        return 1
    versions = [int(d) for d in os.listdir(model_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _infer_image_size(model, image_size):
    if image_size is not None:
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        return image_size
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(
            f"cannot infer the serving resolution from the model's input shape {shape}: pass image_size "
            "(the evaluation resolution, e.g. 256 for F0)"
        )
    return int(shape[1])


def _check_class_names(class_names, num_classes):
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    class_names = [str(name) for name in class_names]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for a model with {num_classes} outputs")
    bad = [name for name in class_names if not name or "\n" in name or "\r" in name]
    if bad:
        raise ValueError(f"class names must be non-empty single lines; bad: {bad[:3]!r}")
    return class_names


def _check_image_bytes(image_bytes):
    """Assert that every item starts like a JPEG, PNG, GIF or BMP file, naming the first that does not."""
    known = tf.zeros_like(image_bytes, dtype=tf.bool)
    for magic, length in _MAGIC:
        known = known | tf.equal(tf.strings.substr(image_bytes, 0, length), magic)
    # The padded 1 keeps argmin defined on an empty batch, which gets its own message below.
    first_bad = tf.argmin(tf.concat([tf.cast(known, tf.int32), [1]], 0), output_type=tf.int32)
    not_empty = tf.debugging.Assert(tf.size(image_bytes) > 0, [f"{BYTES_INPUT} is empty: send at least one image"])
    with tf.control_dependencies([not_empty]):
        return tf.debugging.Assert(
            tf.reduce_all(known),
            [f"{BYTES_INPUT}[i] is not a JPEG, PNG, GIF or BMP image; first bad index i =", first_bad],
        )


def _build_endpoints(model, image_size, top_k, class_table, apply_softmax):
    def classify(batch):
        logits = model(batch, training=False)
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1) if apply_softmax else logits
        _, ids = tf.math.top_k(probabilities, k=top_k)
        names = class_table.lookup(tf.cast(ids, tf.int64))
        return {"probabilities": probabilities, "top_k_ids": ids, "top_k_names": names}

    def eval_batch(fn, elems):
        spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)
        return tf.map_fn(fn, elems, fn_output_signature=spec)

    def from_bytes(image_bytes):
        with tf.control_dependencies([_check_image_bytes(image_bytes)]):
            batch = eval_batch(lambda b: preprocess.preprocess_for_eval(b, image_size), image_bytes)
        return classify(batch)

    def from_images(images):
        batch = eval_batch(
            lambda im: preprocess.normalize_image(preprocess.eval_image(im, image_size)), images
        )
        return classify(batch)

    return from_bytes, from_images


def _warmup_records(model_name, image_size, num_requests=1):
    """Serialized PredictionLog records for TF Serving's warm-up: a batch of one grey JPEG per request."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as error:
        raise ValueError(
            "warm-up requests need the tensorflow-serving-api package (pip install 'tensorflow-serving-api==2.20.*'"
            "); or pass warmup=False"
        ) from error
    jpeg = tf.io.encode_jpeg(tf.fill([image_size, image_size, 3], tf.constant(128, tf.uint8))).numpy()
    records = []
    for _ in range(num_requests):
        request = predict_pb2.PredictRequest(
            model_spec=model_pb2.ModelSpec(name=model_name, signature_name=BYTES_SIGNATURE)
        )
        request.inputs[BYTES_INPUT].CopyFrom(tf.make_tensor_proto([jpeg], dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        records.append(log.SerializeToString())
    return records


def export_for_serving(
    model,
    base_dir,
    model_name,
    version=None,
    class_names=None,
    image_size=None,
    top_k=5,
    apply_softmax=True,
    warmup=True,
    verbose=True,
):
    """Export `model` as `<base_dir>/<model_name>/<version>/` for TF Serving; returns that directory.

    Args:
      model: a built Keras model from normalised float32 images [batch, size, size, 3] (see
        `keras_nfnet.data.preprocess.normalize_image`) to class logits [batch, classes].
      base_dir: the serving root; TF Serving's `--model_base_path` is `<base_dir>/<model_name>`.
      model_name: the name clients address (`/v1/models/<model_name>`): letters, digits, `-`, `_`, `.`.
      version: positive int; default one more than the largest existing version.
      class_names: one name per output class (default "0", "1", ...), shipped as an asset.
      image_size: the evaluation resolution inside the graph; default the model's static input size.
      top_k: how many class ids and names each prediction returns (capped at the number of classes).
      apply_softmax: the model returns logits (True, as NFNet does) or already returns probabilities (False).
      warmup: also write `assets.extra/tf_serving_warmup_requests` (needs tensorflow-serving-api).
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"model must be a built keras.Model, got {type(model).__name__}")
    if not model_name or not all(c.isalnum() or c in "-_." for c in model_name) or model_name[0] == ".":
        raise ValueError(f"model_name must be letters, digits, '-', '_' or '.', got {model_name!r}")
    model_dir = os.path.join(base_dir, model_name)
    if version is None:
        version = next_version(model_dir)
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ValueError(f"version must be a positive int, got {version!r}")
    final_dir = os.path.join(model_dir, str(version))
    if os.path.exists(final_dir):
        raise ValueError(f"{final_dir} already exists; choose another version (next free: {next_version(model_dir)})")
    image_size = _infer_image_size(model, image_size)
    num_classes = int(model.output_shape[-1])
    class_names = _check_class_names(class_names, num_classes)
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    top_k = min(top_k, num_classes)

    os.makedirs(model_dir, exist_ok=True)
    work_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=model_dir)
    try:
        # The table reads the names from a file that tf.saved_model.save copies into assets/.
        names_dir = tempfile.mkdtemp(dir=work_dir)
        names_path = os.path.join(names_dir, CLASS_NAMES_ASSET)
        with open(names_path, "w", encoding="utf-8") as f:
            f.write("\n".join(class_names) + "\n")
        class_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                names_path,
                key_dtype=tf.int64,
                key_index=tf.lookup.TextFileIndex.LINE_NUMBER,
                value_dtype=tf.string,
                value_index=tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value="",
        )
        from_bytes, from_images = _build_endpoints(model, image_size, top_k, class_table, apply_softmax)
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.track(class_table)
        archive.add_endpoint(
            BYTES_SIGNATURE, from_bytes, input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]
        )
        archive.add_endpoint(
            IMAGES_SIGNATURE,
            from_images,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES_INPUT)],
        )
        saved_dir = os.path.join(work_dir, "saved_model")
        archive.write_out(saved_dir, verbose=False)
        if warmup:
            os.makedirs(os.path.join(saved_dir, "assets.extra"), exist_ok=True)
            with tf.io.TFRecordWriter(os.path.join(saved_dir, WARMUP_FILE)) as writer:
                for record in _warmup_records(model_name, image_size):
                    writer.write(record)
        os.rename(saved_dir, final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if verbose:
        print(
            f"exported {model_name} version {version} to {final_dir}: signatures {BYTES_SIGNATURE}"
            f"({BYTES_INPUT}), {IMAGES_SIGNATURE}({IMAGES_INPUT}); {num_classes} classes, top-{top_k}, "
            f"{image_size} px" + (", warm-up requests" if warmup else ""),
            flush=True,
        )
    return final_dir


def read_class_names(export_dir):
    """The class names shipped with an export (line i = class i)."""
    with open(os.path.join(export_dir, "assets", CLASS_NAMES_ASSET), encoding="utf-8") as f:
        return f.read().split("\n")[:-1]  # not splitlines(): names may hold \x0c or \u2028

