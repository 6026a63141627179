"""Signal propagation statistics per NF block, as the signal propagation plots of the NF-ResNet paper
(Brock et al. 2021, "Characterizing signal propagation to close the performance gap in unnormalized ResNets").

For the residual stream after each block: the average squared channel mean and the average channel variance
(means and variances over batch, height and width, then averaged over channels); for the residual branch: its
average channel variance (taken after the squeeze-excite gate, before skip gain and alpha). At initialisation
with every skip gain set to 1, the residual-stream variance should track `expected_var`, the square of the
expected_std schedule that sets each block's beta.
"""
import numpy as np
import keras

from keras_nfnet.layers import NFBlock
from keras_nfnet.models import expected_std_schedule

STAT_KEYS = ("mean_sq_channel_mean", "avg_channel_var", "residual_avg_channel_var", "expected_var")


def _inputs(images_or_shape, channels, seed):
    if isinstance(images_or_shape, (tuple, list)) and all(isinstance(n, int) for n in images_or_shape):
        shape = tuple(images_or_shape)
        if len(shape) != 4 or shape[-1] != channels:
            raise ValueError(f"A shape must be (batch, height, width, {channels}); got {shape}.")
        return np.random.default_rng(seed).standard_normal(shape).astype("float32")
    x = np.asarray(images_or_shape, dtype="float32")
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"Inputs must be a (batch, height, width, {channels}) array; got shape {x.shape}.")
    return x


def _channel_stats(x):
    x = np.asarray(x, dtype="float64").reshape(-1, x.shape[-1])
    return float(np.mean(np.mean(x, axis=0) ** 2)), float(np.mean(np.var(x, axis=0)))


def _expected_stds(model, blocks):
    row = getattr(model, "variant_row", None)
    if row is not None:
        return expected_std_schedule(row)
    out, expected_std = [], 1.0
    for block in blocks:  # without a variant row, treat every projecting block as a stage's first
        expected_std = (1.0 if block.use_projection else expected_std ** 2) ** 0.5
        expected_std = (expected_std ** 2 + block.alpha ** 2) ** 0.5
        out.append(expected_std)
    return out


def signal_propagation(model, images_or_shape=(8, 64, 64, 3), skip_gain=None, feed="images", seed=0):
    """Per-block statistics of `model` (an NFNet).

    Args:
        model: an `NFNet` (any functional model whose blocks are `NFBlock`s).
        images_or_shape: with feed="images", a (batch, height, width, 3) array or such a shape to draw N(0, 1)
            images of; with feed="blocks", a (batch, height, width, channels) array or shape fed straight to the
            first block (channels = its input channels), which isolates the residual stages from the stem.
        skip_gain: if given, every block's skip_gain is set to this value for the measurement and restored after
            (1.0 shows the signal propagation the beta/alpha scheme is designed for; the init value 0 hides it).
        feed: "images" (through the stem) or "blocks" (unit-Gaussian input straight into the first block).
        seed: for the random input.

    Returns:
        A list with one dict per block, in order: block (its name), index, plus STAT_KEYS. Inference mode (no
        stochastic depth, no dropout).
    """
    blocks = [layer for layer in model.layers if isinstance(layer, NFBlock)]
    if not blocks:
        raise ValueError(f"Model {model.name!r} has no NFBlock layers; signal_propagation needs an NFNet.")
    if feed not in ("images", "blocks"):
        raise ValueError(f"feed must be 'images' or 'blocks'; got {feed!r}.")
    x = _inputs(images_or_shape, 3 if feed == "images" else blocks[0].in_channels, seed)
    saved = [keras.ops.convert_to_numpy(b.skip_gain) for b in blocks]
    try:
        if skip_gain is not None:
            for b in blocks:
                b.skip_gain.assign(float(skip_gain))
        if feed == "images":
            stem = keras.Model(model.input, blocks[0].input, name=f"{model.name}_stem_probe")
            x = stem(x, training=False)
        streams, branches = [], []
        for b in blocks:
            # Eager calls: one-shot evaluation, cheaper than compiling a probe model per block on either backend.
            branches.append(keras.ops.convert_to_numpy(b.residual_branch(x)))
            x = b(x, training=False)
            streams.append(keras.ops.convert_to_numpy(x))
    finally:
        for b, g in zip(blocks, saved):
            b.skip_gain.assign(g)

    stats = []
    expected = _expected_stds(model, blocks)
    for i, (block, expected_std) in enumerate(zip(blocks, expected)):
        mean_sq, var = _channel_stats(streams[i])
        _, res_var = _channel_stats(branches[i])
        stats.append({
            "block": block.name,
            "index": i,
            "mean_sq_channel_mean": mean_sq,
            "avg_channel_var": var,
            "residual_avg_channel_var": res_var,
            "expected_var": expected_std ** 2,
        })
    return stats


def format_table(stats):
    """A plain-text table of `signal_propagation` output."""
    header = f"{'block':<16}" + "".join(f"{k:>26}" for k in STAT_KEYS)
    rows = [header] + [f"{s['block']:<16}" + "".join(f"{s[k]:>26.4f}" for k in STAT_KEYS) for s in stats]
    return "\n".join(rows)
