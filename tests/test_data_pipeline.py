"""The exactly-once, host-count-invariant, resumable input pipeline.

References are independent of the pipeline: the set of ids read by a plain TFRecordDataset, single-host runs
(for multi-host runs), uninterrupted runs (for resumed runs) and numpy re-computation of MixUp/CutMix.
"""
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet.data import corpus, records
from keras_nfnet.data.pipeline import eval_dataset, train_dataset
from keras_nfnet.data.sampler import StepSampler, permute
from keras_nfnet.data.synthetic import make_synthetic_corpus

SIZE = 32


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("data") / "c")
    make_synthetic_corpus(d, num_images=37, num_holdout=11, num_classes=6, image_size=32, examples_per_shard=10)
    return d


def _plain_ids(d, split):
    files = corpus.load_metadata(d).split(split).shard_paths(d)
    return sorted(int(tf.io.parse_single_example(r, corpus.feature_spec())["image/id"])
                  for r in tf.data.TFRecordDataset(files))


def _take(ds, n):
    out = []
    for x, y, info in ds.take(n):
        out.append((x.numpy(), y.numpy(), info["id"].numpy(), info["position"].numpy()))
    return out


def test_permutation_is_a_bijection_that_depends_on_seed_and_epoch():
    for n in (1, 2, 3, 10, 37, 1000, 4099):
        for epoch in (0, 1, 7):
            assert np.array_equal(np.sort(permute(np.arange(n), n, 11, epoch)), np.arange(n))
    a, b, c = (permute(np.arange(1000), 1000, s, e) for s, e in ((1, 0), (1, 1), (2, 0)))
    assert (a != b).mean() > 0.9 and (a != c).mean() > 0.9
    # evaluating a few indices of a JFT-sized split needs no O(n) work
    assert permute(np.array([0, 3_999_999_999]), 4_000_000_000, 1, 2).max() < 4_000_000_000


def test_sampler_exactly_once_per_epoch_many_epochs_and_batch_sizes():
    for n, batch, repeats in ((37, 8, 1), (100, 12, 3), (7, 16, 2)):
        s = StepSampler(n, batch, seed=3, repeats=repeats)
        steps = 6 * n // (batch // repeats) + 1
        positions = np.concatenate([s.rows(k)[1][::repeats] for k in range(steps)])
        recs = s.records(positions)
        assert np.array_equal(positions, np.arange(len(positions)))  # no gap, no repeat
        for e in range(5):
            assert np.array_equal(np.sort(recs[e * n:(e + 1) * n]), np.arange(n))


def test_pipeline_sees_each_example_exactly_once_per_epoch(corpus_dir):
    n, batch = 37, 8
    steps = -(-4 * n // batch)
    batches = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=5, with_info=True), steps)
    ids = np.concatenate([b[2] for b in batches])
    positions = np.concatenate([b[3] for b in batches])
    assert np.array_equal(positions, np.arange(steps * batch))
    truth = _plain_ids(corpus_dir, "train")
    orders = []
    for e in range(4):
        epoch_ids = ids[e * n:(e + 1) * n]
        assert sorted(epoch_ids.tolist()) == truth, f"epoch {e} is not a permutation of the split"
        orders.append(epoch_ids.tolist())
    assert orders[0] != orders[1]  # reshuffled every epoch


AUG = dict(mixup_cutmix=True, randaugment_layers=2, randaugment_magnitude=9, repeats=2)


@pytest.mark.parametrize("hosts,aug", [(2, AUG), (4, dict(mixup_cutmix=True))])
def test_global_batch_is_identical_for_any_number_of_hosts(corpus_dir, hosts, aug):
    batch, steps = 16, 3
    single = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=9, with_info=True, **aug), steps)
    per_host = []
    for h in range(hosts):
        ctx = tf.distribute.InputContext(num_input_pipelines=hosts, input_pipeline_id=h, num_replicas_in_sync=hosts)
        per_host.append(_take(train_dataset(corpus_dir, "train", batch, SIZE, seed=9, input_context=ctx,
                                            with_info=True, **aug), steps))
    for s in range(steps):
        for k in range(3):  # images, labels, ids
            joined = np.concatenate([per_host[h][s][k] for h in range(hosts)])
            np.testing.assert_array_equal(joined, single[s][k])


def test_resume_at_any_step_equals_uninterrupted_stream_and_reads_no_skipped_record(corpus_dir, monkeypatch):
    batch = 8
    full = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=2, with_info=True, **AUG), 12)
    reads = []
    original = records.RecordReader.read_many

    def counting_read_many(self, recs, **kw):
        reads.extend(recs)
        return original(self, recs, **kw)

    monkeypatch.setattr(records.RecordReader, "read_many", counting_read_many)
    for start in (5, 11):
        reads.clear()
        resumed = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=2, start_step=start, with_info=True,
                                      **AUG), 12 - start)
        for a, b in zip(full[start:], resumed):
            for k in range(4):
                np.testing.assert_array_equal(a[k], b[k])
    # far into the stream: start costs no reading of the skipped steps (only the batches taken + read-ahead)
    reads.clear()
    _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=2, start_step=100_000, with_info=True), 2)
    assert 0 < len(reads) <= 16 * batch


def test_distribute_datasets_from_function_gives_replicas_their_slice(corpus_dir):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    batch = 8
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: train_dataset(corpus_dir, "train", batch, SIZE, seed=4, input_context=ctx, mixup_cutmix=True))
    single = [(x.numpy(), y.numpy()) for x, y in train_dataset(corpus_dir, "train", batch, SIZE, seed=4,
                                                                 mixup_cutmix=True).take(2)]
    it = iter(dist)
    for s in range(2):
        x, y = next(it)
        xs = strategy.experimental_local_results(x)
        assert len(xs) == 2 and xs[0].shape == (batch // 2, SIZE, SIZE, 3)
        np.testing.assert_array_equal(np.concatenate([t.numpy() for t in xs]), single[s][0])
        np.testing.assert_array_equal(np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)]),
                                      single[s][1])


@pytest.mark.parametrize("hosts", [1, 2])
def test_eval_covers_each_example_once_with_padding_weighted_zero(corpus_dir, hosts):
    batch = 4
    ids, weights = [], []
    for h in range(hosts):
        ctx = tf.distribute.InputContext(hosts, h, hosts) if hosts > 1 else None
        for x, y, info in eval_dataset(corpus_dir, "holdout", batch, SIZE, input_context=ctx, with_info=True):
            assert x.shape == (batch // hosts, SIZE, SIZE, 3)
            ids.append(info["id"].numpy())
            weights.append(info["weight"].numpy())
    ids, weights = np.concatenate(ids), np.concatenate(weights)
    assert len(ids) == 12  # 11 examples padded to 3 batches of 4
    assert sorted(ids[weights == 1].tolist()) == _plain_ids(corpus_dir, "holdout")
    assert (weights == 0).sum() == 1
    x, y, w = next(iter(eval_dataset(corpus_dir, "holdout", 4, SIZE)))
    assert w.shape == (4,) and y.shape == (4, 6)


def test_repeated_augmentation_puts_k_differently_augmented_copies_in_the_batch(corpus_dir):
    x, y, info = next(iter(train_dataset(corpus_dir, "train", 12, SIZE, seed=1, repeats=3, with_info=True)))
    ids = info["id"].numpy().reshape(4, 3)
    assert (ids == ids[:, :1]).all() and len(set(ids[:, 0])) == 4
    x = x.numpy().reshape(4, 3, SIZE, SIZE, 3)
    assert all(np.abs(x[i, 0] - x[i, 1]).mean() > 1e-3 for i in range(4))  # independent crops/flips


def test_mixup_cutmix_against_numpy_recomputation_from_unmixed_batch(corpus_dir):
    batch = 16
    plain = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=8, with_info=True), 1)[0]
    mixed = _take(train_dataset(corpus_dir, "train", batch, SIZE, seed=8, with_info=True, mixup_cutmix=True), 1)[0]
    a, la = plain[0].reshape(batch, -1), plain[1]
    m, lm = mixed[0].reshape(batch, -1), mixed[1]
    kinds = []
    for r in range(0, batch, 2):
        p = r + 1
        for row, other in ((r, p), (p, r)):
            from_own = np.isclose(m[row], a[row], atol=1e-5)
            from_other = np.isclose(m[row], a[other], atol=1e-5)
            if np.all(from_own | from_other) and not np.all(from_own):  # CutMix: every pixel from one image
                own = np.mean(from_own.reshape(SIZE, SIZE, 3)[..., 0])
                kind = "cutmix"
            else:  # MixUp: m = w a_row + (1 - w) a_other, fit w by least squares
                d = a[row] - a[other]
                own = float(np.dot(m[row] - a[other], d) / np.dot(d, d))
                np.testing.assert_allclose(m[row], own * a[row] + (1 - own) * a[other], atol=1e-3)
                kind = "mixup"
            np.testing.assert_allclose(lm[row], own * la[row] + (1 - own) * la[other], atol=2e-3)
        kinds.append(kind)
    assert kinds.count("mixup") == kinds.count("cutmix") == batch // 4  # half and half


def test_bad_arguments_are_clear_errors(corpus_dir):
    with pytest.raises(ValueError, match="no split 'validation'"):
        train_dataset(corpus_dir, "validation", 8, SIZE, seed=0)
    with pytest.raises(ValueError, match="not divisible"):
        train_dataset(corpus_dir, "train", 8, SIZE, seed=0, repeats=3)
    with pytest.raises(ValueError, match="on_bad_record"):
        train_dataset(corpus_dir, "train", 8, SIZE, seed=0, on_bad_record="ignore")
    with pytest.raises(ValueError, match="groups of 2"):
        ctx = tf.distribute.InputContext(8, 0, 8)
        train_dataset(corpus_dir, "train", 8, SIZE, seed=0, input_context=ctx, mixup_cutmix=True)
    with pytest.raises(ValueError, match="start_step"):
        train_dataset(corpus_dir, "train", 8, SIZE, seed=0, start_step=-1)


def test_keras_fit_and_evaluate_consume_the_datasets(corpus_dir):
    import keras

    model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(6)])
    model.compile("sgd", keras.losses.CategoricalCrossentropy(from_logits=True),
                  weighted_metrics=[keras.metrics.CategoricalCrossentropy(from_logits=True, name="xent")])
    hist = model.fit(train_dataset(corpus_dir, "train", 8, SIZE, seed=0), steps_per_epoch=3, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    # A weighted metric over the padded holdout equals the mean loss over the 11 real examples. (Keras' own
    # loss divides by the batch size, padding included: it reports 11/12 of that, so use weighted_metrics.)
    results = model.evaluate(eval_dataset(corpus_dir, "holdout", 4, SIZE), verbose=0, return_dict=True)
    weighted = results["xent"]
    xs, ys = [], []
    for x, y, w in eval_dataset(corpus_dir, "holdout", 4, SIZE):
        keep = w.numpy() > 0
        xs.append(x.numpy()[keep])
        ys.append(y.numpy()[keep])
    logits = model.predict(np.concatenate(xs), verbose=0)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    y = np.concatenate(ys)
    expected = float(np.mean(-(y * logp).sum(1)))
    assert len(y) == 11
    np.testing.assert_allclose(weighted, expected, rtol=1e-4)
    np.testing.assert_allclose(results["loss"], expected * 11 / 12, rtol=1e-4)
