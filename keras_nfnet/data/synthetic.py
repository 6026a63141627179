"""A synthetic JFT-like corpus: procedurally drawn images labelled by a fixed random teacher.

Two label models (`labels=`):
- "compositional" (default; `keras_nfnet/data/scenes.py`): scenes of 1-3 objects, each of a kind (8), a texture
  (8), a colour, size and place; the teacher reads the scene's composition (textures, kinds, kind x texture
  conjunctions, and the kinds of the two largest objects with the direction between them). The parts range
  from easy to hard to see, so held-out loss keeps improving with model size and with data (docs/data.md).
- "conv16" (`keras_nfnet/data/conv_teacher.py`): the first stand-in, a random two-conv teacher on a 16x16 view;
  saturated by a ~73k-parameter student. Kept to reproduce corpora made with it.

Either way, class frequencies are long-tailed (Zipf prior added to the teacher's standardised logits),
multi-label (every class within `label_margin` of the best one, up to `max_labels`), and a fraction
`label_noise` of labels is replaced by random (Zipf-distributed) classes. Everything is a function of `seed`
(images of chunk k use generator (seed, k); the teacher uses its own fixed streams of seed).
"""
import io
import logging
import time

import numpy as np

from keras_nfnet.data import conv_teacher, scenes
from keras_nfnet.data.corpus import CorpusWriter

log = logging.getLogger(__name__)
_CHUNK = 256  # images per generator call; fixed so the corpus does not depend on how it is produced
LABEL_MODELS = ("compositional", "conv16")


class _Compositional:
    min_size, multiple = 8, 1

    def __init__(self, num_classes, seed, zipf_exponent):
        self.teacher = scenes.SceneTeacher(num_classes, seed, zipf_exponent)
        self.log_prior = self.teacher.log_prior

    def draw(self, rng, n, size):
        layout = scenes.draw_layout(rng, n)
        return scenes.render(layout, size, rng), self.teacher.scores(scenes.scene_features(layout))


class _Conv16:
    min_size, multiple = conv_teacher.TEACHER_PX, conv_teacher.TEACHER_PX

    def __init__(self, num_classes, seed, zipf_exponent):
        self.teacher = conv_teacher.ConvTeacher(num_classes, seed, zipf_exponent)
        self.log_prior = self.teacher.log_prior

    def draw(self, rng, n, size):
        images = conv_teacher.draw_images(rng, n, size)
        return images, self.teacher.scores(images)


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
                          image_format="jpeg", examples_per_shard=1024, progress_every=10.0, labels="compositional"):
    """Write the synthetic corpus (splits "train" and "holdout") to `out_dir`; returns a stats dict.

    num_holdout defaults to 5% of num_images (at least 1). labels: "compositional" (image_size >= 8) or "conv16"
    (image_size a multiple of 16); see the module docstring.
    """
    for name, value in (("num_images", num_images), ("num_classes", num_classes), ("image_size", image_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if labels not in LABEL_MODELS:
        raise ValueError(f"labels must be one of {', '.join(LABEL_MODELS)}, got {labels!r}")
    model_cls = _Compositional if labels == "compositional" else _Conv16
    if image_size < model_cls.min_size or image_size % model_cls.multiple:
        raise ValueError(f"image_size for labels={labels} must be a multiple of {model_cls.multiple} and at least "
                         f"{model_cls.min_size}, got {image_size}")
    if not 0.0 <= label_noise <= 1.0:
        raise ValueError(f"label_noise must be in [0, 1], got {label_noise}")
    if num_holdout is None:
        num_holdout = max(1, num_images // 20)
    label_model = model_cls(num_classes, seed, zipf_exponent)
    start = last = time.time()
    total = num_images + num_holdout
    done = 0
    with CorpusWriter(out_dir, num_classes, multi_label=multi_label, image_format=image_format,
                      examples_per_shard=examples_per_shard, name="synthetic-jft",
                      description=f"synthetic JFT-like corpus, seed {seed}, {labels} teacher") as writer:
        for split, count, id_base in (("train", num_images, 0), ("holdout", num_holdout, num_images)):
            for chunk_start in range(0, count, _CHUNK):
                chunk = (id_base + chunk_start) // _CHUNK if split == "train" else 1_000_000 + chunk_start // _CHUNK
                rng = np.random.default_rng([seed, chunk])
                n = min(_CHUNK, count - chunk_start)
                images, scores = label_model.draw(rng, _CHUNK, image_size)
                label_lists = labels_from_scores(scores[:n], rng, multi_label, label_margin, max_labels,
                                                 label_noise, label_model.log_prior)
                for j in range(n):
                    writer.add(split, encode(images[j], image_format), label_lists[j], id_base + chunk_start + j)
                done += n
                if progress_every and time.time() - last > progress_every:
                    last = time.time()
                    log.info("synthetic corpus: %d/%d images (%.0f images/s)", done, total, done / (last - start))
    seconds = time.time() - start
    return {"images": total, "seconds": seconds, "images_per_second": total / max(seconds, 1e-9)}
