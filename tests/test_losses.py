"""Recipe losses against numpy formulas (and Keras's own loss where one exists)."""
import keras
import numpy as np
import pytest

from keras_nfnet.losses import SigmoidCrossEntropy, SoftmaxCrossEntropy, recipe_loss


def numpy_softmax_xent(labels, logits, smoothing):
    logits = logits.astype(np.float64)
    num_classes = logits.shape[-1]
    targets = np.eye(num_classes)[labels] if labels.ndim == 1 else labels.astype(np.float64)
    targets = targets * (1 - smoothing) + smoothing / num_classes
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(np.mean(-(targets * log_probs).sum(-1)))


def numpy_sigmoid_xent(labels, logits, per_class_mean=False):
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    per_class = -(labels * np.log(p) + (1 - labels) * np.log(1 - p))
    return float(np.mean(per_class.mean(-1) if per_class_mean else per_class.sum(-1)))


def value(x):
    return float(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_softmax_cross_entropy_with_smoothing(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 10)).astype(np.float32) * 3
    labels = rng.integers(0, 10, size=6)
    loss = SoftmaxCrossEntropy(label_smoothing=smoothing)
    expected = numpy_softmax_xent(labels, logits, smoothing)
    np.testing.assert_allclose(value(loss(labels, logits)), expected, rtol=1e-5)
    np.testing.assert_allclose(value(loss(labels[:, None], logits)), expected, rtol=1e-5)
    one_hot = np.eye(10, dtype=np.float32)[labels]
    np.testing.assert_allclose(value(loss(one_hot, logits)), expected, rtol=1e-5)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=smoothing)
    np.testing.assert_allclose(value(loss(one_hot, logits)), value(keras_loss(one_hot, logits)), rtol=1e-5)


def test_softmax_cross_entropy_soft_labels_and_low_precision_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(4, 5)).astype(np.float32)
    soft = rng.dirichlet(np.ones(5), size=4).astype(np.float32)  # MixUp-style targets
    loss = SoftmaxCrossEntropy(label_smoothing=0.1)
    np.testing.assert_allclose(value(loss(soft, logits)), numpy_softmax_xent(soft, logits, 0.1), rtol=1e-5)
    half = keras.ops.cast(logits, "float16")
    result = loss(soft, half)
    assert keras.backend.standardize_dtype(result.dtype) == "float32"
    np.testing.assert_allclose(value(result), numpy_softmax_xent(soft, logits, 0.1), rtol=2e-3)


def test_sigmoid_cross_entropy_multi_label():
    rng = np.random.default_rng(2)
    logits = (rng.normal(size=(5, 7)) * 4).astype(np.float32)
    labels = (rng.random(size=(5, 7)) < 0.3).astype(np.float32)
    np.testing.assert_allclose(value(SigmoidCrossEntropy()(labels, logits)), numpy_sigmoid_xent(labels, logits),
                               rtol=1e-5)
    mean = SigmoidCrossEntropy(class_reduction="mean")
    np.testing.assert_allclose(value(mean(labels, logits)), numpy_sigmoid_xent(labels, logits, True), rtol=1e-5)
    keras_bce = keras.losses.BinaryCrossentropy(from_logits=True)
    np.testing.assert_allclose(value(mean(labels, logits)), value(keras_bce(labels, logits)), rtol=1e-5)
    # Large logits stay finite (the stable form).
    big = np.array([[80.0, -80.0]], np.float32)
    np.testing.assert_allclose(value(SigmoidCrossEntropy()(np.array([[0.0, 1.0]], np.float32), big)), 160.0,
                               rtol=1e-5)


def test_losses_train_inside_fit_and_serialize():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=SoftmaxCrossEntropy())
    x = np.random.default_rng(3).normal(size=(8, 3)).astype(np.float32)
    history = model.fit(x, np.arange(8) % 4, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    for loss in (SoftmaxCrossEntropy(0.2), SigmoidCrossEntropy("mean", 0.1)):
        clone = keras.losses.deserialize(keras.losses.serialize(loss))
        assert type(clone) is type(loss) and clone.get_config() == loss.get_config()


def test_bad_arguments():
    with pytest.raises(ValueError, match="label_smoothing"):
        SoftmaxCrossEntropy(label_smoothing=1.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        SigmoidCrossEntropy(label_smoothing=-0.1)
    with pytest.raises(ValueError, match="class_reduction"):
        SigmoidCrossEntropy(class_reduction="max")
    logits = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="class indices must be in"):
        SoftmaxCrossEntropy()(np.array([0, 3]), logits)
    with pytest.raises(ValueError, match="labels must be class indices"):
        SoftmaxCrossEntropy()(np.zeros((2, 4), np.float32), logits)
    with pytest.raises(ValueError, match="multi-hot labels"):
        SigmoidCrossEntropy()(np.zeros((2, 4), np.float32), logits)


def test_recipe_loss_sums_sigmoid_over_classes_and_gives_per_example_values():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(6, 30)).astype(np.float32)
    multi_hot = (rng.random((6, 30)) < 0.1).astype(np.float32)
    # JFT-style: summed over classes, so the gradient does not shrink with the class count.
    np.testing.assert_allclose(value(recipe_loss(True)(multi_hot, logits)), numpy_sigmoid_xent(multi_hot, logits),
                               rtol=1e-5)
    one_hot = np.eye(30, dtype=np.float32)[rng.integers(0, 30, 6)]
    np.testing.assert_allclose(value(recipe_loss(False, 0.1)(one_hot, logits)),
                               numpy_softmax_xent(one_hot.argmax(-1), logits, 0.1), rtol=1e-5)
    per_example = keras.ops.convert_to_numpy(recipe_loss(True, reduction=None)(multi_hot, logits))
    assert per_example.shape == (6,)
    np.testing.assert_allclose(per_example.mean(), numpy_sigmoid_xent(multi_hot, logits), rtol=1e-5)
