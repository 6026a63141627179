"""Preprocessing against independent references: NFNET_SPEC constants, numpy/PIL re-computations."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_nfnet.data import preprocess


def test_normalisation_matches_spec_formula():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3)).astype(np.uint8)
    mean = np.array([0.485, 0.456, 0.406]) * 255  # NFNET_SPEC section 2
    std = np.array([0.229, 0.224, 0.225]) * 255
    expected = (image.astype(np.float64) - mean) / std
    got = preprocess.normalize_image(tf.constant(image)).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(preprocess.denormalize_image(got).numpy(), image, atol=1e-3)


def _smooth_image(h, w):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([127 + 100 * np.sin(x / 9.0), 127 + 100 * np.cos(y / 7.0), (x + y) % 256 * 0 + 90], -1).astype(
        np.uint8)


def test_eval_crop_matches_pil_bicubic_resize_and_numpy_centre_crop():
    size = 32
    image = _smooth_image(61, 90)
    # Reference: PIL bicubic resize of the whole image to (size+32)^2, then a numpy centre crop.
    big = np.asarray(Image.fromarray(image).resize((size + 32, size + 32), Image.BICUBIC), np.float32)
    off = (size + 32 - size) // 2
    expected = big[off:off + size, off:off + size]
    got = preprocess.eval_image(tf.constant(image), size).numpy()
    assert got.shape == (size, size, 3)
    # TF and PIL use different bicubic kernels/antialias filters: agree to a few grey levels on a smooth image.
    assert np.abs(got - expected).mean() < 2.0
    # The crop really is central: offsetting the reference crop by 4 px is clearly worse.
    shifted = big[off + 4:off + 4 + size, off:off + size]
    assert np.abs(got - shifted).mean() > 4 * np.abs(got - expected).mean()


def test_eval_crop_of_image_already_at_resize_size_is_the_exact_centre():
    size = 16
    image = np.random.default_rng(1).integers(0, 256, (size + 32, size + 32, 3)).astype(np.uint8)
    got = preprocess.eval_image(tf.constant(image), size).numpy()
    np.testing.assert_allclose(got, image[16:16 + size, 16:16 + size].astype(np.float32), atol=1e-3)


def test_preprocess_for_eval_decodes_png_and_normalises():
    image = _smooth_image(40, 50)
    png = tf.io.encode_png(image)
    got = preprocess.preprocess_for_eval(png, 24).numpy()
    expected = preprocess.normalize_image(preprocess.eval_image(tf.constant(image), 24)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_train_image_is_a_function_of_the_seed_and_crops_within_the_area_range():
    image = tf.constant(_smooth_image(64, 64))
    a = preprocess.train_image(image, 32, tf.constant([3, 4])).numpy()
    b = preprocess.train_image(image, 32, tf.constant([3, 4])).numpy()
    c = preprocess.train_image(image, 32, tf.constant([3, 5])).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).mean() > 1.0
    # Inception crop: area fraction in [0.08, 1] and aspect ratio in [3/4, 4/3] (up to pixel rounding).
    for s in range(20):
        crop = preprocess.inception_crop(image, tf.constant([s, 0])).shape
        area = crop[0] * crop[1] / 64.0 ** 2
        assert 0.08 - 0.02 <= area <= 1.0
        assert 0.75 - 0.1 <= crop[1] / crop[0] <= 4 / 3 + 0.1


@pytest.mark.parametrize("size", [0, -3, 32.0, None])
def test_bad_image_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match="image_size"):
        preprocess.eval_image(tf.zeros([8, 8, 3], tf.uint8), size)


@pytest.mark.parametrize("size, fraction, resize", [(32, 1.0, 32), (32, 0.875, 37), (64, 64 / 96, 96), (24, 0.5, 48)])
def test_eval_view_is_resize_to_size_over_crop_fraction_then_centre_crop(size, fraction, resize):
    image = _smooth_image(70, 53)
    assert preprocess.eval_resize_size(size, fraction) == resize == round(size / fraction)
    # Reference: PIL bicubic resize of the whole image to round(size / crop_fraction)^2, numpy centre crop.
    big = np.asarray(Image.fromarray(image).resize((resize, resize), Image.BICUBIC), np.float32)
    off = (resize - size) // 2
    expected = big[off:off + size, off:off + size]
    got = preprocess.eval_image(tf.constant(image), size, fraction).numpy()
    assert got.shape == (size, size, 3) and np.abs(got - expected).mean() < 2.0
    if off + 4 + size <= resize:  # a crop off-centre by 4 px is clearly worse
        shifted = big[off + 4:off + 4 + size, off:off + size]
        assert np.abs(got - shifted).mean() > 2 * np.abs(got - expected).mean()


def test_papers_view_is_the_default_and_equals_its_crop_fraction():
    image = tf.constant(_smooth_image(50, 61))
    for size in (16, 32, 64, 256):
        assert preprocess.eval_resize_size(size, preprocess.paper_crop_fraction(size)) == size + 32
        np.testing.assert_array_equal(preprocess.eval_image(image, 16).numpy(),
                                      preprocess.eval_image(image, 16, preprocess.paper_crop_fraction(16)).numpy())


def test_whole_image_view_equals_the_training_view_without_crop_and_flip():
    image = tf.constant(_smooth_image(45, 38))
    for seed in ([0, 1], [5, 9]):
        np.testing.assert_array_equal(preprocess.eval_image(image, 32, 1.0).numpy(),
                                      preprocess.train_image(image, 32, tf.constant(seed), crop=False,
                                                             flip=False).numpy())


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5, float("nan"), True, "0.9"])
def test_bad_crop_fraction_is_a_clear_error(fraction):
    with pytest.raises(ValueError, match="crop_fraction must be in"):
        preprocess.eval_image(tf.zeros([8, 8, 3], tf.uint8), 8, fraction)
