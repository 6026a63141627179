"""The first synthetic stand-in's labels (`labels="conv16"`): a fixed random conv teacher on a 16x16 view.

Images are smooth random colour fields with up to three coloured rectangles and discs; labels come from a fixed
random convolutional teacher (two 3x3 conv layers and a two-layer head) applied to a 16x16 area-averaged view. A
student of ~73k parameters already has the capacity it needs (docs/data.md), so this corpus does not reward model
size beyond that; it is kept so that corpora and studies made with it can be reproduced exactly.
"""
import numpy as np

TEACHER_PX = 16


class ConvTeacher:
    """Fixed random conv net: 16x16x3 -> conv3x3(16) relu -> avgpool 2 -> conv3x3(32) relu -> mean+max -> tanh
    dense(64) -> dense(num_classes), with per-class standardisation of the logits and a Zipf log-prior."""

    def __init__(self, num_classes, seed, zipf_exponent=1.0, teacher_scale=3.0):
        rng = np.random.default_rng([seed, 0x7EAC4E])
        self.w1 = rng.normal(0, np.sqrt(2 / 27), (27, 16)).astype(np.float32)
        self.b1 = rng.normal(0, 0.1, 16).astype(np.float32)
        self.w2 = rng.normal(0, np.sqrt(2 / 144), (144, 32)).astype(np.float32)
        self.b2 = rng.normal(0, 0.1, 32).astype(np.float32)
        self.w3 = rng.normal(0, np.sqrt(1 / 64), (64, 64)).astype(np.float32)
        self.w4 = rng.normal(0, np.sqrt(1 / 64), (64, num_classes)).astype(np.float32)
        self.log_prior = (-zipf_exponent * np.log(np.arange(1, num_classes + 1))).astype(np.float32)
        self.teacher_scale = teacher_scale
        # Standardise each class's logit over a calibration set so that the prior, not the random weights,
        # decides which classes are frequent.
        calib = draw_images(np.random.default_rng([seed, 0xCA11B]), 512, TEACHER_PX)
        raw = self._raw_logits(calib)
        self.mu, self.sigma = raw.mean(0), raw.std(0) + 1e-6

    @staticmethod
    def _conv3x3(x, w, b):
        patches = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # [n, h-2, w-2, c, 3, 3]
        patches = patches.transpose(0, 1, 2, 4, 5, 3).reshape(*patches.shape[:3], -1)
        return np.maximum(patches @ w + b, 0.0)

    def _raw_logits(self, images16):
        x = images16.astype(np.float32) / 127.5 - 1.0
        h = self._conv3x3(x, self.w1, self.b1)  # 14x14x16
        n, hh, ww, c = h.shape
        h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))  # 7x7
        h = self._conv3x3(h, self.w2, self.b2)  # 5x5x32
        feats = np.concatenate([h.mean(axis=(1, 2)), h.max(axis=(1, 2))], axis=1)
        return np.tanh(feats @ self.w3) @ self.w4

    def scores(self, images):
        small = downsample(images, TEACHER_PX)
        # teacher_scale sets how much the pixels (vs. the Zipf prior) decide the label.
        return self.teacher_scale * (self._raw_logits(small) - self.mu) / self.sigma + self.log_prior


def downsample(images, size):
    """Area-average uint8 [n, s, s, 3] images to [n, size, size, 3] float (s must be a multiple of size)."""
    n, s = images.shape[0], images.shape[1]
    if s % size:
        raise ValueError(f"image_size {s} must be a multiple of {size}")
    f = s // size
    return images.reshape(n, size, f, size, f, 3).astype(np.float32).mean(axis=(2, 4))


def draw_images(rng, n, size):
    """n procedurally drawn uint8 images [n, size, size, 3]: smooth colour field + rectangles + discs."""
    coarse = rng.normal(0, 1, (n, 4, 4, 3)).astype(np.float32)
    # bilinear upsampling of a 4x4 field (separable interpolation matrix)
    grid = np.linspace(0, 3, size)
    lo = np.minimum(np.floor(grid).astype(int), 2)
    frac = grid - lo
    interp = np.zeros((size, 4), np.float32)
    interp[np.arange(size), lo] = 1 - frac
    interp[np.arange(size), lo + 1] = frac
    field = np.einsum("yi,nijc,xj->nyxc", interp, coarse, interp)
    img = 128 + 40 * field
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    for _ in range(3):
        present = rng.random(n) < 0.7
        colour = rng.uniform(0, 255, (n, 3)).astype(np.float32)
        cy, cx = rng.uniform(0.1, 0.9, (2, n, 1, 1)).astype(np.float32)
        r = rng.uniform(0.05, 0.3, (n, 1, 1)).astype(np.float32)
        disc = rng.random(n)[:, None, None] < 0.5
        mask_disc = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        mask_rect = (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r * rng.uniform(0.3, 1.5, (n, 1, 1)))
        mask = np.where(disc, mask_disc, mask_rect) & present[:, None, None]
        img = np.where(mask[..., None], colour[:, None, None, :], img)
    return np.clip(img, 0, 255).astype(np.uint8)
