"""Image preprocessing for NFNets: decode, Inception crop, flip, bicubic resize, normalise, evaluation view.

Pure TensorFlow functions on single images (HWC), usable inside `tf.data` and inside a SavedModel graph.
All randomness is stateless: a training transform takes an explicit `[2]` int seed, so the same (seed, example
position) always gives the same pixels (needed for exact resume). Constants follow NFNET_SPEC section 2 and the
evaluation protocol of section 4.

The evaluation view is defined by (image_size, crop_fraction) and nothing else: the whole image is resized
(bicubic, antialiased, to a square, ignoring its aspect ratio) to `eval_resize_size(image_size, crop_fraction)` =
round(image_size / crop_fraction) per side, clipped to [0, 255], centre-cropped to image_size (offset
(resized - image_size) // 2), then normalised. crop_fraction 1.0 is the whole image, which equals the training
view with crop and flip off; the papers' ImageNet protocol ("resize to size + 32, centre-crop size") is
`paper_crop_fraction(image_size)` = size / (size + 32), the default when crop_fraction is None. Evaluation,
export and serving all call `eval_image` / `preprocess_for_eval`, so one implementation defines the view.
"""
import math

import tensorflow as tf

# ImageNet statistics on the [0, 255] scale (NFNET_SPEC section 2).
MEAN_RGB = (0.485 * 255.0, 0.456 * 255.0, 0.406 * 255.0)
STDDEV_RGB = (0.229 * 255.0, 0.224 * 255.0, 0.225 * 255.0)

# The papers' evaluation: resize the whole image to (size + EVAL_PADDING)^2, then centre-crop size^2.
EVAL_PADDING = 32

# Inception-style crop ranges (NFNET_SPEC section 4).
CROP_AREA_RANGE = (0.08, 1.0)
CROP_ASPECT_RANGE = (3.0 / 4.0, 4.0 / 3.0)


def _check_size(image_size):
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size <= 0:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")


def normalize_image(image):
    """RGB in [0, 255] (any dtype) -> float32 `(x - mean * 255) / (std * 255)`, channel last."""
    image = tf.cast(image, tf.float32)
    return (image - tf.constant(MEAN_RGB, tf.float32)) / tf.constant(STDDEV_RGB, tf.float32)


def denormalize_image(image):
    """Inverse of `normalize_image` (float32, [0, 255] scale): for inspection and augmentation round-trips."""
    return image * tf.constant(STDDEV_RGB, tf.float32) + tf.constant(MEAN_RGB, tf.float32)


def decode_image(image_bytes, channels=3):
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, channels] with a static channel dimension.

    Grey images are expanded to RGB and RGBA images lose alpha (`channels=3`), so every image has 3 channels.
    """
    image = tf.io.decode_image(image_bytes, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def resize_bicubic(image, height, width):
    """Bicubic resize (with antialiasing when shrinking) to float32 clipped to [0, 255].

    Bicubic interpolation overshoots near edges; clipping keeps pixels in the range the normalisation and the
    augmentation ops expect.
    """
    image = tf.image.resize(tf.cast(image, tf.float32), [height, width], method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)


def center_crop(image, crop_size):
    """Crop the central crop_size x crop_size window (the image must be at least that large)."""
    shape = tf.shape(image)
    top = (shape[0] - crop_size) // 2
    left = (shape[1] - crop_size) // 2
    return image[top:top + crop_size, left:left + crop_size, :]


def paper_crop_fraction(image_size):
    """The NFNet papers' ImageNet evaluation view as a crop fraction: size / (size + 32)."""
    _check_size(image_size)
    return image_size / (image_size + EVAL_PADDING)


def check_crop_fraction(crop_fraction):
    """A crop fraction in (0, 1] as a float (ValueError otherwise); None stays None (the papers' view)."""
    if crop_fraction is None:
        return None
    if isinstance(crop_fraction, bool) or not isinstance(crop_fraction, (int, float)) \
            or not math.isfinite(crop_fraction) or not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must be in (0, 1] (1 = the whole image), got {crop_fraction!r}")
    return float(crop_fraction)


def eval_resize_size(image_size, crop_fraction=None):
    """Side the whole image is resized to before the centre crop: round(image_size / crop_fraction)."""
    _check_size(image_size)
    crop_fraction = check_crop_fraction(crop_fraction)
    if crop_fraction is None:
        return image_size + EVAL_PADDING
    return max(image_size, int(round(image_size / crop_fraction)))


def eval_image(image, image_size, crop_fraction=None):
    """Evaluation view of a decoded image: resize the whole image to `eval_resize_size(image_size,
    crop_fraction)` squared (bicubic), centre-crop image_size squared. crop_fraction None = the papers' view.

    Returns float32 [size, size, 3] in [0, 255] (not normalised: call `normalize_image`).
    """
    resize = eval_resize_size(image_size, crop_fraction)
    image = resize_bicubic(image, resize, resize)
    if resize != image_size:
        image = center_crop(image, image_size)
    image.set_shape([image_size, image_size, 3])
    return image


def eval_input(image, image_size, crop_fraction=None):
    """Decoded image -> normalised float32 [size, size, 3] evaluation input (the export's graph uses this)."""
    return normalize_image(eval_image(image, image_size, crop_fraction))


def preprocess_for_eval(image_bytes, image_size, crop_fraction=None):
    """Encoded bytes -> normalised float32 [size, size, 3] evaluation input."""
    return eval_input(decode_image(image_bytes), image_size, crop_fraction)


def inception_crop(image, seed, area_range=CROP_AREA_RANGE, aspect_ratio_range=CROP_ASPECT_RANGE):
    """Random crop covering `area_range` of the image with aspect ratio in `aspect_ratio_range` (stateless).

    Falls back to the whole image when no valid window is found within 10 attempts (the Inception recipe).
    """
    shape = tf.shape(image)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, [1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_ratio_range,
        area_range=area_range,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.slice(image, begin, size)


def random_flip(image, seed):
    """Horizontal flip with probability 1/2, decided by the stateless seed."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def train_image(image, image_size, seed, crop=True, flip=True):
    """Training view of a decoded image: Inception crop, flip, bicubic resize to size^2.

    Returns float32 [size, size, 3] in [0, 255] (not normalised, so RandAugment can follow).
    """
    _check_size(image_size)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    if crop:
        image = inception_crop(image, seeds[0])
    if flip:
        image = random_flip(image, seeds[1])
    image = resize_bicubic(image, image_size, image_size)
    image.set_shape([image_size, image_size, 3])
    return image
