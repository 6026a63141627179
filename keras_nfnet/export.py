"""SavedModel export for TensorFlow Serving.

`export_for_serving` writes `<base_dir>/<model_name>/<version>/`, the layout TF Serving's `--model_base_path`
expects, with two signatures that both run the evaluation preprocessing of `keras_nfnet.data.preprocess` inside
the graph (so a served prediction equals an evaluation-time prediction):

- `serving_default`: `image_bytes` (string [batch], JPEG/PNG/GIF/BMP) -> `probabilities` (float32 [batch, classes]),
  `top_k_ids` (int32 [batch, k]), `top_k_names` (string [batch, k]);
- `predict_images`: `images` (uint8 [batch, height, width, 3], RGB) -> the same outputs.

Class names travel as the asset `assets/class_names.txt` (one per line, line i = class i) read by a lookup table;
the evaluation view inside the graph (image size, crop fraction, resize side, normalisation) is written to
`assets.extra/preprocessing.json` for people and tools (the graph does not read it); and an optional warm-up file `assets.extra/tf_serving_warmup_requests` (TF Serving's PredictionLog TFRecord, one
request per signature) lets TF Serving run both graphs once before it reports the model AVAILABLE. A version
directory is written under a temporary name and renamed into place, so a server watching the base path never sees
a half-written version.

The graph runs on a stock `tensorflow_model_server`, which disables XLA: the model is traced with grouped
convolutions in the "split" form (one ordinary convolution per group, `keras_nfnet.layers.use_grouped_conv_form`),
so no function in the SavedModel carries `_XlaMustCompile`, on whatever machine the export runs.

`image_bytes` is bounded before anything is decoded: each item's header (JPEG frame header, PNG IHDR, BMP info
header, every GIF frame descriptor) gives the pixels the decoder would allocate, and an item declaring more than
`max_image_pixels` fails the batch with an `InvalidArgumentError` naming the item, its size and the limit.
"""
import json
import math
import os
import shutil
import tempfile

import keras
import tensorflow as tf

from keras_nfnet import layers, storage
from keras_nfnet.data import preprocess

BYTES_SIGNATURE = "serving_default"
IMAGES_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"
IMAGES_INPUT = "images"
CLASS_NAMES_ASSET = "class_names.txt"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
PREPROCESSING_FILE = os.path.join("assets.extra", "preprocessing.json")

# The form grouped convolutions take in the exported graph (see keras_nfnet.layers.use_grouped_conv_form): "split"
# has no XLA-only function, so a stock tensorflow_model_server (XLA off) runs it. Tests set "native" for a control.
GROUPED_CONV_FORM = "split"
# Most pixels one image may declare (4096 x 4096: a 12-16 MP photo passes); see `max_image_pixels`.
DEFAULT_MAX_IMAGE_PIXELS = 1 << 24
# A GIF is walked block by block (each frame descriptor and extension); more blocks than this is refused.
MAX_GIF_BLOCKS = 20000

# Leading bytes of the formats `tf.io.decode_image` accepts. Checked first so that a batch holding something
# else fails with a message naming the item, rather than the decoder's generic error.
_MAGIC = ((b"\xff\xd8\xff", 3), (b"\x89PNG", 4), (b"GIF8", 4), (b"BM", 2))


def next_version(model_dir):
    """1 + the largest numeric version under `model_dir` (1 when there is none), as TF Serving numbers them."""
    if not storage.isdir(model_dir):
        return 1
    versions = [int(d) for d in storage.listdir(model_dir) if d.isdigit()]
    return max(versions, default=0) + 1


def _infer_image_size(model, image_size):
    if image_size is None:
        image_size = getattr(model, "eval_image_size", None)  # an NFNet's own evaluation view
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
        message = tf.strings.format(BYTES_INPUT + "[{}] is not a JPEG, PNG, GIF or BMP image", [first_bad])
        return tf.debugging.Assert(tf.reduce_all(known), [message])


def _header_bytes(data, count):
    """The first `count` bytes of a scalar string as int64 [count], zero-padded when the string is shorter."""
    head = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 0, count), tf.uint8), tf.int64)
    return tf.pad(head, [[0, count - tf.size(head)]])


def _gif_size(data):
    """(largest frame width, largest frame height, pixels of all frames, too many blocks) of a GIF, as int64 [4].

    TensorFlow's GIF decoder reads every frame (giflib allocates each frame's width x height) and sizes its output
    by the largest frame, whatever the logical screen says; so every frame descriptor is read. Sub-block chains
    (size byte, data, ..., 0) are skipped through a pointer-doubling table: O(n log n) vector work for n bytes,
    then one loop step per block (frame or extension), at most MAX_GIF_BLOCKS.
    """
    raw = tf.cast(tf.io.decode_raw(data, tf.uint8), tf.int32)
    n = tf.size(raw)
    b = tf.concat([raw, [0]], 0)  # b[n] = 0: a chain running off the end stops at n
    index = tf.range(n + 1)
    jump = tf.where(tf.equal(b, 0), index, tf.minimum(index + b + 1, n))
    doublings = tf.cast(tf.math.ceil(tf.math.log(tf.cast(n + 2, tf.float32)) / math.log(2.0)), tf.int32) + 1
    _, chain_end = tf.while_loop(
        lambda i, j: i < doublings, lambda i, j: (i + 1, tf.gather(j, j)), [tf.constant(0), jump]
    )

    def byte(p):
        return tf.gather(b, tf.minimum(p, n))

    def u16(p):
        return byte(p) + 256 * byte(p + 1)

    def table_size(flags):  # size of a colour table announced by a packed-fields byte
        return tf.where(tf.bitwise.bitwise_and(flags, 0x80) > 0,
                        3 * tf.bitwise.left_shift(2, tf.bitwise.bitwise_and(flags, 7)), 0)

    def body(pos, count, total, max_w, max_h, done):
        c = byte(pos)
        is_ext, is_image = tf.equal(c, 0x21), tf.equal(c, 0x2C)
        width, height = tf.cast(u16(pos + 5), tf.int64), tf.cast(u16(pos + 7), tf.int64)
        image_next = tf.gather(chain_end, tf.minimum(pos + 10 + table_size(byte(pos + 9)) + 1, n)) + 1
        ext_next = tf.gather(chain_end, tf.minimum(pos + 2, n)) + 1
        stop = tf.logical_or(pos >= n, tf.logical_not(tf.logical_or(is_ext, is_image)))
        zero = tf.constant(0, tf.int64)
        return (
            tf.where(is_image, image_next, tf.where(is_ext, ext_next, pos)),
            count + tf.cast(tf.logical_not(stop), tf.int32),
            total + tf.where(is_image & ~stop, width * height, zero),
            tf.maximum(max_w, tf.where(is_image & ~stop, width, zero)),
            tf.maximum(max_h, tf.where(is_image & ~stop, height, zero)),
            stop,
        )

    zero = tf.constant(0, tf.int64)
    _, count, total, max_w, max_h, done = tf.while_loop(
        lambda pos, count, *rest: tf.logical_and(tf.logical_not(rest[-1]), count < MAX_GIF_BLOCKS),
        body,
        [13 + table_size(byte(10)), tf.constant(0), zero, zero, zero, tf.constant(False)],
    )
    return tf.stack([max_w, max_h, total, tf.cast(tf.logical_not(done), tf.int64)])


def declared_image_size(data):
    """(width, height, pixels, too complex) an encoded image's header declares, before decoding; int64 [4].

    JPEG: the frame header (via `tf.io.extract_jpeg_shape`); PNG: IHDR; BMP: the info header (|height|); GIF: every
    frame (pixels = all frames). Anything else gives zeros (the format check rejects it first).
    """
    head = _header_bytes(data, 26)
    zeros = tf.zeros([4], tf.int64)

    def be32(i):
        return head[i] * 2**24 + head[i + 1] * 2**16 + head[i + 2] * 2**8 + head[i + 3]

    def le32_signed(i):
        value = head[i] + head[i + 1] * 2**8 + head[i + 2] * 2**16 + head[i + 3] * 2**24
        return tf.where(value >= 2**31, value - 2**32, value)

    def jpeg():
        shape = tf.io.extract_jpeg_shape(data, output_type=tf.int64)
        return tf.stack([shape[1], shape[0], shape[0] * shape[1], tf.constant(0, tf.int64)])

    def png():
        width, height = be32(16), be32(20)
        return tf.stack([width, height, width * height, tf.constant(0, tf.int64)])

    def bmp():
        width, height = tf.abs(le32_signed(18)), tf.abs(le32_signed(22))
        return tf.stack([width, height, width * height, tf.constant(0, tf.int64)])

    def starts_with(magic):
        return tf.equal(tf.strings.substr(data, 0, len(magic)), magic)

    branch = tf.where(starts_with(b"\xff\xd8\xff"), 0, tf.where(starts_with(b"\x89PNG"), 1, tf.where(
        starts_with(b"GIF8"), 2, tf.where(starts_with(b"BM"), 3, 4))))
    return tf.switch_case(branch, [jpeg, png, lambda: _gif_size(data), bmp, lambda: zeros])


def _check_image_sizes(image_bytes, max_pixels):
    """Assert that no item declares more than `max_pixels` pixels (or a GIF with too many blocks), naming it."""
    sizes = tf.map_fn(declared_image_size, image_bytes, fn_output_signature=tf.TensorSpec([4], tf.int64))
    bad = tf.logical_or(sizes[:, 2] > max_pixels, sizes[:, 3] > 0)
    first = tf.argmax(tf.concat([tf.cast(bad, tf.int32), [1]], 0), output_type=tf.int32)
    size = tf.gather(tf.concat([sizes, tf.zeros([1, 4], tf.int64)], 0), first)
    message = tf.cond(
        size[3] > 0,
        lambda: tf.strings.format(
            BYTES_INPUT + f"[{{}}] is a GIF with more than {MAX_GIF_BLOCKS} blocks (frames and extensions); "
            "not decoded", [first]),
        lambda: tf.strings.format(
            BYTES_INPUT + f"[{{}}] declares {{}}x{{}} = {{}} pixels, more than the limit of {max_pixels} pixels; "
            "not decoded", [first, size[0], size[1], size[2]]),
    )
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), [message])


def _eval_input(image, image_size, crop_fraction):
    """The one place the export's image preprocessing lives: the evaluation view of a decoded uint8 [H, W, 3]
    image, normalised (what `keras_nfnet.data.preprocess` gives evaluation), float32 [size, size, 3]."""
    return preprocess.eval_input(image, image_size, crop_fraction)


# Images preprocessed at once per request. Each decoded image costs about 16 bytes per pixel while it is resized
# (uint8 + float32 copies), so this bounds a request's memory to about PARALLEL_IMAGES x 16 x max_image_pixels.
PARALLEL_IMAGES = 2


def _build_endpoints(model, image_size, crop_fraction, top_k, class_table, apply_softmax, max_image_pixels):
    def classify(batch):
        logits = model(batch, training=False)
        logits = tf.cast(logits, tf.float32)
        probabilities = tf.nn.softmax(logits, axis=-1) if apply_softmax else logits
        _, ids = tf.math.top_k(probabilities, k=top_k)
        names = class_table.lookup(tf.cast(ids, tf.int64))
        return {"probabilities": probabilities, "top_k_ids": ids, "top_k_names": names}

    def eval_batch(fn, elems):
        spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)
        return tf.map_fn(fn, elems, fn_output_signature=spec, parallel_iterations=PARALLEL_IMAGES)

    def from_bytes(image_bytes):
        with tf.control_dependencies([_check_image_bytes(image_bytes)]):
            sizes_ok = _check_image_sizes(image_bytes, max_image_pixels)
        with tf.control_dependencies([sizes_ok]):
            batch = eval_batch(lambda b: _eval_input(preprocess.decode_image(b), image_size, crop_fraction),
                               image_bytes)
        return classify(batch)

    def from_images(images):
        return classify(eval_batch(lambda image: _eval_input(image, image_size, crop_fraction), images))

    return from_bytes, from_images


def _warmup_records(model_name, image_size, num_requests=1):
    """Serialized PredictionLog records for TF Serving's warm-up: per request, a batch of one grey image through
    each signature (a JPEG through `serving_default`, pixels through `predict_images`), so both are warm."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as error:
        raise ValueError(
            "warm-up requests need the tensorflow-serving-api package (pip install 'tensorflow-serving-api==2.20.*'"
            "); or pass warmup=False"
        ) from error
    pixels = tf.fill([1, image_size, image_size, 3], tf.constant(128, tf.uint8))
    jpeg = tf.io.encode_jpeg(pixels[0]).numpy()
    inputs = ((BYTES_SIGNATURE, BYTES_INPUT, tf.make_tensor_proto([jpeg], dtype=tf.string)),
              (IMAGES_SIGNATURE, IMAGES_INPUT, tf.make_tensor_proto(pixels.numpy())))
    records = []
    for _ in range(num_requests):
        for signature, name, tensor in inputs:
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature)
            )
            request.inputs[name].CopyFrom(tensor)
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
    crop_fraction="model",
    top_k=5,
    apply_softmax=True,
    warmup=True,
    max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
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
      image_size: the evaluation resolution inside the graph; default the model's `eval_image_size` (an NFNet
        fine-tuned by keras_nfnet carries it), else its static input size.
      crop_fraction: the evaluation view's crop fraction (`keras_nfnet.data.preprocess.eval_image`); default
        the model's `crop_fraction`; None (or a model without one) = the papers' size / (size + 32).
      top_k: how many class ids and names each prediction returns (capped at the number of classes).
      apply_softmax: the model returns logits (True, as NFNet does) or already returns probabilities (False).
      warmup: also write `assets.extra/tf_serving_warmup_requests` (needs tensorflow-serving-api).
      max_image_pixels: `image_bytes` items whose header declares more pixels are refused before decoding.
    """
    if not isinstance(model, keras.Model) or not model.built:
        raise ValueError(f"model must be a built keras.Model, got {type(model).__name__}")
    if not model_name or not all(c.isalnum() or c in "-_." for c in model_name) or model_name[0] == ".":
        raise ValueError(f"model_name must be letters, digits, '-', '_' or '.', got {model_name!r}")
    model_dir = storage.join(base_dir, model_name)
    if version is None:
        version = next_version(model_dir)
    if not isinstance(version, int) or isinstance(version, bool) or version <= 0:
        raise ValueError(f"version must be a positive int, got {version!r}")
    final_dir = storage.join(model_dir, str(version))
    if storage.exists(final_dir):
        raise ValueError(f"{final_dir} already exists; choose another version (next free: {next_version(model_dir)})")
    image_size = _infer_image_size(model, image_size)
    if crop_fraction == "model":
        crop_fraction = getattr(model, "crop_fraction", None)
    crop_fraction = preprocess.check_crop_fraction(crop_fraction)
    if crop_fraction is None:
        crop_fraction = preprocess.paper_crop_fraction(image_size)
    num_classes = int(model.output_shape[-1])
    class_names = _check_class_names(class_names, num_classes)
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    top_k = min(top_k, num_classes)
    if not isinstance(max_image_pixels, int) or isinstance(max_image_pixels, bool) or max_image_pixels <= 0:
        raise ValueError(f"max_image_pixels must be a positive int, got {max_image_pixels!r}")

    remote = storage.is_remote(model_dir)
    if not remote:
        os.makedirs(model_dir, exist_ok=True)
    # Written locally beside the final directory (renamed into place), or in a local temporary one (uploaded).
    work_dir = tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=None if remote else model_dir)
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
        from_bytes, from_images = _build_endpoints(model, image_size, crop_fraction, top_k, class_table,
                                                   apply_softmax, max_image_pixels)
        saved_dir = os.path.join(work_dir, "saved_model")
        # Traced (and saved) with one ordinary convolution per group: no XLA-only function, on any machine.
        with layers.use_grouped_conv_form(GROUPED_CONV_FORM):
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
            archive.write_out(saved_dir, verbose=False)
        os.makedirs(os.path.join(saved_dir, "assets.extra"), exist_ok=True)
        with open(os.path.join(saved_dir, PREPROCESSING_FILE), "w") as f:
            json.dump(preprocessing_metadata(image_size, crop_fraction), f, indent=1)
        if warmup:
            with tf.io.TFRecordWriter(os.path.join(saved_dir, WARMUP_FILE)) as writer:
                for record in _warmup_records(model_name, image_size):
                    writer.write(record)
        if remote:
            _upload_saved_model(saved_dir, final_dir)
        else:
            os.rename(saved_dir, final_dir)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    if verbose:
        print(
            f"exported {model_name} version {version} to {final_dir}: signatures {BYTES_SIGNATURE}"
            f"({BYTES_INPUT}), {IMAGES_SIGNATURE}({IMAGES_INPUT}); {num_classes} classes, top-{top_k}, "
            f"{preprocessing_metadata(image_size, crop_fraction)['view']}, at most {max_image_pixels} pixels per "
            "image" + (", warm-up requests" if warmup else ""),
            flush=True,
        )
    return final_dir


def _upload_saved_model(local_dir, remote_dir):
    """Copy a SavedModel directory to a bucket with saved_model.pb last: a bucket has no rename, and TF Serving
    takes a version directory as loadable once its saved_model.pb exists, so it never loads a partial upload."""
    files = []
    for root, _, names in os.walk(local_dir):
        files += [os.path.relpath(os.path.join(root, n), local_dir) for n in names]
    for rel in sorted(files, key=lambda rel: (rel == "saved_model.pb", rel)):
        with open(os.path.join(local_dir, rel), "rb") as src, \
                storage.open(storage.join(remote_dir, *rel.split(os.sep)), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)


def preprocessing_metadata(image_size, crop_fraction):
    """What `assets.extra/preprocessing.json` says about the graph's evaluation view."""
    resize = preprocess.eval_resize_size(image_size, crop_fraction)
    view = f"the whole image resized to {image_size}x{image_size} px (bicubic, antialiased)" if resize == image_size \
        else f"the whole image resized to {resize}x{resize} px (bicubic, antialiased), centre-cropped to " \
             f"{image_size}x{image_size} px"
    return {
        "image_size": image_size, "crop_fraction": crop_fraction, "resize_size": resize,
        "view": f"{view} (crop fraction {crop_fraction:.4g})",
        "mean_rgb": list(preprocess.MEAN_RGB), "stddev_rgb": list(preprocess.STDDEV_RGB),
    }


def read_preprocessing(export_dir):
    """The evaluation view an export was written with (`assets.extra/preprocessing.json`)."""
    return json.loads(storage.read_text(storage.join(export_dir, *PREPROCESSING_FILE.split(os.sep))))


def read_class_names(export_dir):
    """The class names shipped with an export (line i = class i)."""
    # not splitlines(): names may hold \x0c or \u2028
    return storage.read_text(storage.join(export_dir, "assets", CLASS_NAMES_ASSET)).split("\n")[:-1]

