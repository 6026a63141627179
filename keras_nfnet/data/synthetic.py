"""A synthetic JFT-like corpus: procedurally drawn images labelled by a fixed random "teacher" network.

Images are smooth random colour fields with a few coloured rectangles and discs (compositional content at
several scales). Labels come from a fixed random convolutional teacher applied to a 16x16 view of the image,
so the label is a learnable but non-trivial function of the pixels: a student needs enough capacity to imitate
the teacher's two conv layers and enough data to pin down many classes, which is what lets held-out loss
improve with model size and with data (see docs/data.md). Class frequencies are long-tailed (Zipf prior added to
the teacher's standardised logits), multi-label (every class within `label_margin` of the best one, up to
`max_labels`), and a fraction `label_noise` of labels is replaced by random (Zipf-distributed) classes.
Everything is a function of `seed` (images of chunk k use generator (seed, k); the teacher uses (seed, "teacher")).
"""
import io
import logging
import time

import numpy as np

from keras_nfnet.data.corpus import CorpusWriter

log = logging.getLogger(__name__)
_CHUNK = 256  # images per generator call; fixed so the corpus does not depend on how it is produced
_TEACHER_PX = 16


class Teacher:
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
        calib = draw_images(np.random.default_rng([seed, 0xCA11B]), 512, _TEACHER_PX)
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
        small = downsample(images, _TEACHER_PX)
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


def labels_from_scores(scores, rng, multi_label, label_margin, max_labels, label_noise, log_prior):
    """Per-image label lists from teacher scores (see module docstring)."""
    n, c = scores.shape
    k = min(max_labels, c)
    order = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < c else np.tile(np.arange(c), (n, 1))
    top = np.take_along_axis(scores, order, axis=1)
    rank = np.argsort(-top, axis=1)
    order, top = np.take_along_axis(order, rank, axis=1), np.take_along_axis(top, rank, axis=1)
    prior_cdf = np.cumsum(np.exp(log_prior - log_prior.max()))
    prior_cdf /= prior_cdf[-1]
    out = []
    for i in range(n):
        keep = order[i][top[i] >= top[i, 0] - label_margin] if multi_label else order[i][:1].copy()
        noisy = rng.random(len(keep)) < label_noise
        keep[noisy] = np.minimum(np.searchsorted(prior_cdf, rng.random(int(noisy.sum()))), c - 1)
        out.append(sorted(set(int(v) for v in keep)))
    return out


def encode(image, image_format):
    from PIL import Image

    buf = io.BytesIO()
    if image_format == "jpeg":
        Image.fromarray(image).save(buf, format="JPEG", quality=90)
    else:
        Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def make_synthetic_corpus(out_dir, num_images=10000, num_classes=1000, image_size=64, num_holdout=None, seed=0,
                          multi_label=True, zipf_exponent=1.0, label_margin=0.5, max_labels=3, label_noise=0.05,
                          image_format="jpeg", examples_per_shard=1024, progress_every=10.0):
    """Write the synthetic corpus (splits "train" and "holdout") to `out_dir`; returns a stats dict.

    num_holdout defaults to 5% of num_images (at least 1). image_size must be a multiple of 16.
    """
    for name, value in (("num_images", num_images), ("num_classes", num_classes), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if image_size % _TEACHER_PX:
        raise ValueError(f"image_size must be a multiple of {_TEACHER_PX}, got {image_size}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if num_holdout is None:
        num_holdout = max(1, num_images // 20)
    teacher = Teacher(num_classes, seed, zipf_exponent)
    start = last = time.time()
    total = num_images + num_holdout
    done = 0
    with CorpusWriter(out_dir, num_classes, multi_label=multi_label, image_format=image_format,
                      examples_per_shard=examples_per_shard, name="synthetic-jft",
                      description=f"synthetic JFT-like corpus, seed {seed}, teacher-labelled") as writer:
        for split, count, id_base in (("train", num_images, 0), ("holdout", num_holdout, num_images)):
            for chunk_start in range(0, count, _CHUNK):
                chunk = (id_base + chunk_start) // _CHUNK if split == "train" else 1_000_000 + chunk_start // _CHUNK
                rng = np.random.default_rng([seed, chunk])
                n = min(_CHUNK, count - chunk_start)
                images = draw_images(rng, _CHUNK, image_size)[:n]
                labels = labels_from_scores(teacher.scores(images), rng, multi_label, label_margin, max_labels,
                                            label_noise, teacher.log_prior)
                for j in range(n):
                    writer.add(split, encode(images[j], image_format), labels[j], id_base + chunk_start + j)
                done += n
                if progress_every and time.time() - last > progress_every:
                    last = time.time()
                    log.info("synthetic corpus: %d/%d images (%.0f images/s)", done, total, done / (last - start))
    seconds = time.time() - start
    return {"images": total, "seconds": seconds, "images_per_second": total / max(seconds, 1e-9)}
