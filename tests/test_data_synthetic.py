"""The synthetic corpus's compositional label model: shapes and features against closed forms and brute force, and
the written corpus's class distribution, multi-label statistics, label noise, determinism and held-out split,
all recomputed from the records read back with a plain TFRecordDataset."""
import hashlib
import math

import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import corpus, scenes
from keras_nfnet.data.synthetic import make_synthetic_corpus


def _read(corpus_dir, split):
    """[(id, labels, image bytes)] of a split, in file order, read with TensorFlow's own TFRecord reader."""
    info = corpus.load_metadata(corpus_dir)
    ds = tf.data.TFRecordDataset(info.split(split).shard_paths(corpus_dir))
    out = []
    for record in ds:
        ex = corpus.decode_example(record.numpy())
        out.append((ex["id"], ex["labels"], ex["image"]))
    return out


def _one_object_layout(kind, texture=0, radius=0.3, colour=(255, 0, 255)):
    one = lambda v: np.array([[v, 0, 0]])  # noqa: E731
    return dict(kind=one(kind), texture=one(texture), present=np.array([[True, False, False]]),
                radius=np.array([[radius, 0.1, 0.1]]), cy=one(0.5), cx=one(0.5),
                colour=np.array([[colour, colour, colour]], float), colour2=np.zeros((1, 3, 3)),
                angle=np.zeros((1, 3)))


# Closed-form areas of the shapes in units of radius^2 (see scenes.shape_mask).
_AREAS = {"disc": math.pi, "square": 1.7 ** 2, "diamond": 2 * 1.15 ** 2, "triangle": 0.6 * 1.75 ** 2,
          "ring": math.pi * 0.7, "cross": 2 * (0.66 * 2) - 0.66 ** 2, "bar": 2 * 0.8, "frame": 1.9 ** 2 - 1.1 ** 2}


@pytest.mark.parametrize("kind", scenes.KINDS)
def test_rendered_shape_area_matches_closed_form(kind):
    size, radius = 96, 0.3
    image = scenes.render(_one_object_layout(scenes.KINDS.index(kind), radius=radius), size,
                          np.random.default_rng(0))[0]
    pixels = np.all(image == (255, 0, 255), axis=-1).sum()
    expected = _AREAS[kind] * (radius * size) ** 2
    assert abs(pixels - expected) < 0.06 * expected, (kind, pixels, expected)


def test_textures_show_their_second_colour_in_the_expected_share():
    size = 96
    for texture, name in enumerate(scenes.TEXTURES):
        layout = _one_object_layout(scenes.KINDS.index("square"), texture=texture)
        layout["colour2"][:] = (0, 255, 0)
        image = scenes.render(layout, size, np.random.default_rng(0))[0]
        first = np.all(image == (255, 0, 255), axis=-1).sum()
        second = np.all(image == (0, 255, 0), axis=-1).sum()
        share = second / (first + second)
        # solid: none; stripes, checker, rings: half (sign of a sine); dots: sin*sin > 0.5, about 1/6 of the area
        expected = {"solid": 0.0, "dots": 0.17}.get(name, 0.5)
        assert abs(share - expected) < 0.08, (name, share)


def _features_by_loops(layout):
    nk, nt, nd = len(scenes.KINDS), len(scenes.TEXTURES), scenes.DIRECTIONS
    n = layout["kind"].shape[0]
    out = np.zeros((n, nt + nk + nk * nt + nk * nk * nd))
    for i in range(n):
        for j in range(scenes.MAX_OBJECTS):
            if layout["present"][i, j]:
                k, t = layout["kind"][i, j], layout["texture"][i, j]
                out[i, t] += 1
                out[i, nt + k] += 1
                out[i, nt + nk + k * nt + t] += 1
        if layout["present"][i, 1]:
            dy = layout["cy"][i, 1] - layout["cy"][i, 0]
            dx = layout["cx"][i, 1] - layout["cx"][i, 0]
            if abs(dx) >= abs(dy):
                d = 0 if dx > 0 else 2  # right / left
            else:
                d = 1 if dy > 0 else 3  # below (y grows downwards) / above
            pair = (layout["kind"][i, 0] * nk + layout["kind"][i, 1]) * nd + d
            out[i, nt + nk + nk * nt + pair] = 1
    return out


def test_scene_features_match_a_loop_over_objects():
    layout = scenes.draw_layout(np.random.default_rng(5), 400)
    assert np.all(np.diff(layout["radius"], axis=1) <= 0)  # largest first
    counts = layout["present"].sum(1)
    assert set(counts) == {1, 2, 3}
    np.testing.assert_array_equal(scenes.scene_features(layout), _features_by_loops(layout))


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    kw = dict(num_classes=50, image_size=16, examples_per_shard=200)
    paths = {}
    paths["a"] = str(root / "a")
    make_synthetic_corpus(paths["a"], num_images=600, num_holdout=300, seed=3, **kw)
    paths["a_again"] = str(root / "a_again")
    make_synthetic_corpus(paths["a_again"], num_images=600, num_holdout=300, seed=3, **kw)
    paths["a_short"] = str(root / "a_short")
    make_synthetic_corpus(paths["a_short"], num_images=300, num_holdout=10, seed=3, **kw)
    paths["seed4"] = str(root / "seed4")
    make_synthetic_corpus(paths["seed4"], num_images=600, num_holdout=300, seed=4, **kw)
    for noise in (0.0, 0.5):
        paths[f"single{noise}"] = str(root / f"single{noise}")
        make_synthetic_corpus(paths[f"single{noise}"], num_images=1000, num_holdout=10, seed=3, multi_label=False,
                              label_noise=noise, **kw)
    paths["clean_multi"] = str(root / "clean_multi")
    make_synthetic_corpus(paths["clean_multi"], num_images=300, num_holdout=10, seed=3, label_noise=0.0, **kw)
    return paths


def test_metadata_frequencies_and_long_tail(corpora):
    info = corpus.load_metadata(corpora["a"])
    assert info.num_classes == 50 and info.multi_label and info.split_sizes == {"train": 600, "holdout": 300}
    for split in ("train", "holdout"):
        labels = [label for _, ls, _ in _read(corpora["a"], split) for label in ls]
        counts = np.bincount(labels, minlength=50)
        np.testing.assert_array_equal(counts, info.split(split).label_frequencies)
    counts = np.asarray(info.split("train").label_frequencies)
    # Zipf prior by class index: the first 5 classes carry more labels than the last 25 (a fifth as many if the
    # classes were uniform), yet most classes occur
    assert counts[:5].sum() > 1.2 * counts[25:].sum()
    assert counts[:5].sum() > 0.3 * counts.sum()
    assert (counts > 0).sum() > 30
    rank_corr = np.corrcoef(np.argsort(np.argsort(-counts)), np.arange(50))[0, 1]
    assert rank_corr > 0.6  # frequency rank follows the prior's order


def test_multi_label_statistics_and_single_label_mode(corpora):
    per_image = np.array([len(ls) for _, ls, _ in _read(corpora["a"], "train")])
    assert per_image.min() >= 1 and per_image.max() <= 3
    assert 1.1 < per_image.mean() < 2.5 and (per_image > 1).mean() > 0.1
    for noise in (0.0, 0.5):
        assert all(len(ls) == 1 for _, ls, _ in _read(corpora[f"single{noise}"], "train"))


def _clean_labels(seed, num_classes, n, margin=0.5, max_labels=3):
    """The label rule recomputed in numpy from the teacher's scores: the best class and every class within
    `margin` of it, at most `max_labels` (the corpus's chunk k draws its scenes from generator (seed, k))."""
    teacher = scenes.SceneTeacher(num_classes, seed)
    out = []
    for chunk in range(-(-n // 256)):
        layout = scenes.draw_layout(np.random.default_rng([seed, chunk]), 256)
        scores = teacher.scores(scenes.scene_features(layout))
        for s in scores:
            order = np.argsort(-s, kind="stable")[:max_labels]
            out.append(sorted(int(c) for c in order if s[c] >= s[order[0]] - margin))
    return out[:n]


def test_labels_are_the_teacher_rule_on_the_scene(corpora):
    expected = _clean_labels(3, 50, 300)
    got = [ls for _, ls, _ in _read(corpora["clean_multi"], "train")]
    assert got == expected
    single = [ls[0] for _, ls, _ in _read(corpora["single0.0"], "train")]
    assert single == [ls_ for ls_ in (np.argmax(s) for s in _scores(3, 50, 1000))]


def _scores(seed, num_classes, n):
    teacher = scenes.SceneTeacher(num_classes, seed)
    rows = [teacher.scores(scenes.scene_features(scenes.draw_layout(np.random.default_rng([seed, k]), 256)))
            for k in range(-(-n // 256))]
    return np.concatenate(rows)[:n]


def test_label_noise_rate(corpora):
    clean = np.array([ls[0] for _, ls, _ in _read(corpora["single0.0"], "train")])
    noisy = np.array([ls[0] for _, ls, _ in _read(corpora["single0.5"], "train")])
    prior = 1.0 / np.arange(1, 51)
    prior /= prior.sum()
    # a replaced label is a Zipf draw, which equals the clean label with probability prior[clean]
    expected = 0.5 * np.mean(1 - prior[clean])
    changed = np.mean(clean != noisy)
    sigma = math.sqrt(expected * (1 - expected) / len(clean))
    assert abs(changed - expected) < 4 * sigma, (changed, expected)


def test_determinism_and_prefix_stability(corpora):
    a, again, short, other = (corpus.load_metadata(corpora[k]) for k in ("a", "a_again", "a_short", "seed4"))
    for split in ("train", "holdout"):
        assert [s["sha256"] for s in a.split(split).shards] == [s["sha256"] for s in again.split(split).shards]
    assert [s["sha256"] for s in a.split("train").shards] != [s["sha256"] for s in other.split("train").shards]
    # A smaller corpus of the same seed is a prefix of a larger one (chunks are independent of the total).
    assert _read(corpora["a_short"], "train") == _read(corpora["a"], "train")[:300]


def test_holdout_is_disjoint_from_train(corpora):
    train, hold = _read(corpora["a"], "train"), _read(corpora["a"], "holdout")
    assert len({i for i, _, _ in train}) == 600 and len({i for i, _, _ in hold}) == 300
    assert not {i for i, _, _ in train} & {i for i, _, _ in hold}
    digest = lambda b: hashlib.sha256(tf.io.decode_jpeg(b).numpy().tobytes()).hexdigest()  # noqa: E731
    assert not {digest(b) for _, _, b in train} & {digest(b) for _, _, b in hold}
    # ... and drawn from the same distribution: the class frequencies agree (chi-square, head classes pooled)
    counts = [np.bincount([ls[0] for _, ls, _ in rows], minlength=50) for rows in (train, hold)]
    head = [np.r_[c[:6], c[6:].sum()] for c in counts]
    table = np.array(head, float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    assert chi2 < 22.5  # 6 degrees of freedom, p = 0.001


def test_conv16_labels_still_available_and_sizes_checked(tmp_path):
    make_synthetic_corpus(str(tmp_path / "old"), num_images=20, num_classes=5, image_size=16, labels="conv16")
    assert corpus.load_metadata(str(tmp_path / "old")).split_sizes == {"train": 20, "holdout": 1}
    with pytest.raises(ValueError, match="multiple of 16"):
        make_synthetic_corpus(str(tmp_path / "x"), num_images=20, num_classes=5, image_size=24, labels="conv16")
    with pytest.raises(ValueError, match="labels must be one of"):
        make_synthetic_corpus(str(tmp_path / "y"), num_images=20, num_classes=5, image_size=16, labels="nope")
