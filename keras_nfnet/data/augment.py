"""RandAugment and MixUp/CutMix driven by stateless randomness.

tf-models-official's `RandAugment` and `MixupAndCutmix` draw from unseeded stateful random ops, so a resumed
pipeline could not reproduce them. Here every random choice (op, sign, cut-out centre, mixing ratio, cut box) is
drawn with `tf.random.stateless_*` from a seed derived from (pipeline seed, example position, copy), and the image
operations themselves are tf-models-official's per-op functions (`official.vision.ops.augment.NAME_TO_FUNC`, the
TPU op set the NFNet paper used).
"""
import tensorflow as tf

from keras_nfnet import compat

# tf-models-official's RandAugment op list (its default `available_ops`), in its order.
RANDAUGMENT_OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "Color", "Contrast", "Brightness",
    "Sharpness", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)
MAX_LEVEL = 10.0
REPLACE_VALUE = [128, 128, 128]
MIXUP_ALPHA = 0.2
CUTMIX_ALPHA = 1.0


def _op_args(name, level, sign, cutout_const, translate_const):
    """Arguments of op `name` at magnitude `level` (tf-models-official's level_to_arg, with the sign drawn by us)."""
    frac = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (sign * frac * 30.0, REPLACE_VALUE)
    if name == "Posterize":
        return (int(frac * 4),)
    if name == "Solarize":
        return (int(frac * 256),)
    if name == "SolarizeAdd":
        return (int(frac * 110),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (frac * 1.8 + 0.1,)
    if name in ("ShearX", "ShearY"):
        return (sign * frac * 0.3, REPLACE_VALUE)
    if name in ("TranslateX", "TranslateY"):
        return (sign * frac * float(translate_const), REPLACE_VALUE)
    raise ValueError(f"unknown RandAugment op {name!r}; known: {RANDAUGMENT_OPS}")


def rand_augment(image, seed, num_layers=2, magnitude=10.0, cutout_const=40.0, translate_const=100.0,
                 ops=RANDAUGMENT_OPS):
    """RandAugment of one uint8 (or [0, 255] float) HWC image with stateless seed `seed` ([2] int).

    Each layer picks one of `ops` or the identity uniformly (tf-models-official's choice rule) and applies it at
    `magnitude` (0-10+). Returns the image in its input dtype.
    """
    unknown = [op for op in ops if op not in RANDAUGMENT_OPS]
    if unknown:
        raise ValueError(f"unknown RandAugment ops {unknown}; known: {RANDAUGMENT_OPS}")
    if num_layers < 0:
        raise ValueError(f"num_layers must be >= 0, got {num_layers}")
    from official.vision.ops import augment as tfm_augment  # imported on first use: it takes seconds

    in_dtype = image.dtype
    if in_dtype != tf.uint8:
        image = tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)
    static_shape = image.shape
    magnitude = float(magnitude)
    base_seed = tf.cast(seed, tf.int64)

    def layer_fn(layer, img):
        s_op, s_sign, s_cy, s_cx = tf.unstack(tf.random.experimental.stateless_split(
            tf.random.experimental.stateless_fold_in(base_seed, layer), 4))
        op_index = tf.random.stateless_uniform([], s_op, minval=0, maxval=len(ops) + 1, dtype=tf.int32)
        sign = tf.where(tf.random.stateless_uniform([], s_sign) < 0.5, -1.0, 1.0)

        def make_branch(name):
            if name == "Cutout":
                # tf-models' cutout() draws its centre statefully; fill the same rectangle with our own centre.
                pad = int(magnitude / MAX_LEVEL * cutout_const)
                cy = tf.random.stateless_uniform([], s_cy, 0, tf.shape(img)[0], dtype=tf.int32)
                cx = tf.random.stateless_uniform([], s_cx, 0, tf.shape(img)[1], dtype=tf.int32)
                return lambda: compat.fill_rectangle(img, cx, cy, pad, pad, REPLACE_VALUE[0])
            args = _op_args(name, magnitude, sign, cutout_const, translate_const)
            func = tfm_augment.NAME_TO_FUNC[name]
            return lambda: tf.ensure_shape(func(img, *args), static_shape)

        branches = [make_branch(name) for name in ops] + [lambda: tf.identity(img)]
        out = tf.switch_case(op_index, branches)
        out.set_shape(static_shape)
        return out

    # Unrolled (layers are few): a tf.while_loop here cost ~8% of the pipeline's throughput.
    for layer in range(num_layers):
        image = layer_fn(layer, image)
    return tf.cast(image, in_dtype)


def mix_draws(seed):
    """The per-example random numbers MixUp/CutMix need: [mixup lambda, cutmix lambda, box centre y, x] (float32).

    Drawn per example (from its own seed) so that a pair's mixing does not depend on how the batch is split
    between hosts: a pair uses the draws of its first member.
    """
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 6)

    def beta(alpha, s1, s2):
        g1 = tf.random.stateless_gamma([], s1, alpha=alpha)
        g2 = tf.random.stateless_gamma([], s2, alpha=alpha)
        return g1 / tf.maximum(g1 + g2, 1e-12)

    return tf.stack([
        beta(MIXUP_ALPHA, s[0], s[1]),
        beta(CUTMIX_ALPHA, s[2], s[3]),
        tf.random.stateless_uniform([], s[4]),
        tf.random.stateless_uniform([], s[5]),
    ])


def mixup_cutmix(images, labels, draws, rows, group_size=2):
    """MixUp on even pairs and CutMix on odd pairs of a batch; returns (images, labels) mixed.

    images [b, H, W, 3] float, labels [b, C] float, draws [b, 4] from `mix_draws`, rows [b] the global row numbers.
    Rows are mixed in groups of `group_size` consecutive global rows (row r with row group_size-1-r of its group);
    with repeated augmentation the group size is 2 * repeats so no image is mixed with its own copy. Global pair
    number (even -> MixUp, odd -> CutMix) splits the batch half/half. b must be a multiple of group_size and the
    batch must start at a group boundary.
    """
    b = tf.shape(images)[0]
    local = tf.range(b)
    within = local % group_size
    partner = local - within + (group_size - 1 - within)
    first = tf.minimum(local, partner)  # the pair's first member supplies the random draws
    d = tf.gather(draws, first)
    first_row = tf.gather(rows, first)
    pair_number = (first_row // group_size) * (group_size // 2) + (first_row % group_size)
    use_cutmix = tf.equal(pair_number % 2, 1)

    other_images = tf.gather(images, partner)
    other_labels = tf.gather(labels, partner)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    # CutMix box of area (1 - lambda) centred at a uniform point, clipped to the image; lambda corrected to the
    # clipped area. The first member keeps the outside of the box and the second member the inside, so the pair
    # swaps the same region.
    lam_c = d[:, 1]
    cut = tf.sqrt(1.0 - lam_c)
    hf, wf = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    cy, cx = d[:, 2] * hf, d[:, 3] * wf
    y0 = tf.clip_by_value(tf.round(cy - cut * hf / 2), 0, hf)
    y1 = tf.clip_by_value(tf.round(cy + cut * hf / 2), 0, hf)
    x0 = tf.clip_by_value(tf.round(cx - cut * wf / 2), 0, wf)
    x1 = tf.clip_by_value(tf.round(cx + cut * wf / 2), 0, wf)
    ys = tf.cast(tf.range(height), tf.float32)[None, :, None]
    xs = tf.cast(tf.range(width), tf.float32)[None, None, :]
    inside = ((ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) &
              (xs < x1[:, None, None]))
    box_frac = (y1 - y0) * (x1 - x0) / (hf * wf)
    is_first = tf.equal(local, first)
    # Row keeps its own pixels outside the box if it is the first member, inside the box if second.
    keep_own = tf.where(is_first[:, None, None], ~inside, inside)
    own_frac_cut = tf.where(is_first, 1.0 - box_frac, box_frac)
    lam_m = d[:, 0]
    own_frac_mix = tf.where(is_first, lam_m, 1.0 - lam_m)

    # One blend for both: each pixel's own weight is the 0/1 box mask (CutMix) or lambda (MixUp); a 0/1 weight
    # copies pixels exactly.
    own_pixel = tf.where(use_cutmix[:, None, None], tf.cast(keep_own, images.dtype),
                         tf.cast(own_frac_mix, images.dtype)[:, None, None])[..., None]
    out_images = own_pixel * images + (1.0 - own_pixel) * other_images
    own = tf.where(use_cutmix, own_frac_cut, own_frac_mix)
    out_labels = own[:, None] * labels + (1.0 - own[:, None]) * other_labels
    return out_images, out_labels
