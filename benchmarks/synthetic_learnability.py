"""Does the synthetic JFT-like corpus reward bigger models and more data? A small grid, printed as a table.

Trains plain Keras CNNs of several widths (or NFNet S0..S3 with --model nfnet) on growing subsets of a synthetic
single-label corpus (the compositional label model by default, --labels conv16 for the first one) and reports the
best held-out cross-entropy over training (early stopping), so that "more data" is not confounded with
over-fitting. The corpus and the runs are seeded. Every run has the same number of steps, so at the largest size
the data is seen fewest times.

    python benchmarks/synthetic_learnability.py                     # ~3-5 min on 2 CPU cores
    python benchmarks/synthetic_learnability.py --model nfnet --widths S0,S1,S2,S3 --sizes 2000,8000 --steps 1000
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_nfnet.data import corpus, preprocess, records  # noqa: E402
from keras_nfnet.data.synthetic import make_synthetic_corpus  # noqa: E402


def load_split(corpus_dir, split):
    info = corpus.load_metadata(corpus_dir)
    reader = records.RecordReader(info.split(split).shard_paths(corpus_dir))
    payloads, _ = reader.read_many(np.arange(reader.num_records))
    exs = [corpus.decode_example(p) for p in payloads]
    images = np.stack([tf.io.decode_jpeg(e["image"], channels=3).numpy() for e in exs])
    labels = np.array([e["labels"][0] for e in exs])
    return preprocess.normalize_image(images).numpy(), labels


def cnn(width, num_classes, size):
    import keras

    layers = keras.layers
    inputs = keras.Input((size, size, 3))
    x = inputs
    for mult in (1, 2, 4):
        x = layers.Conv2D(width * mult, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(width * mult, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def nfnet(variant, num_classes, size):
    from keras_nfnet.models import NFNet

    return NFNet(variant, num_classes=num_classes, input_shape=(size, size, 3), stochastic_depth_rate=0.0)


def main():
    import keras

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "nfnet"], default="cnn")
    parser.add_argument("--widths", default="4,16,48", help="CNN base widths, or NFNet variants")
    parser.add_argument("--sizes", default="1000,4000", help="training-set sizes")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=600, help="training steps per run")
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--labels", choices=["compositional", "conv16"], default="compositional",
                        help="the corpus's label model (keras_nfnet/data/synthetic.py)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=2e-3, help="Adam learning rate (every run)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    widths = args.widths.split(",")
    d = os.path.join(tempfile.mkdtemp(), "synthetic")
    t = time.time()
    make_synthetic_corpus(d, num_images=max(sizes), num_holdout=args.holdout, num_classes=args.num_classes,
                          image_size=args.image_size, multi_label=False, seed=args.seed, labels=args.labels)
    print(f"corpus: {max(sizes)} train + {args.holdout} holdout images in {time.time() - t:.0f} s")
    x_train, y_train = load_split(d, "train")
    x_hold, y_hold = load_split(d, "holdout")
    prior = np.bincount(y_train, minlength=args.num_classes) / len(y_train)
    prior_loss = -np.mean(np.log(prior[y_hold] + 1e-12))
    results, params = {}, {}
    for w in widths:
        for n in sizes:
            keras.utils.set_random_seed(args.seed)
            model = (cnn(int(w), args.num_classes, args.image_size) if args.model == "cnn"
                     else nfnet(w, args.num_classes, args.image_size))
            model.compile(keras.optimizers.Adam(args.learning_rate),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
            epochs = 10
            steps_per_epoch = max(1, args.steps // epochs)
            ds = (tf.data.Dataset.from_tensor_slices((x_train[:n], y_train[:n])).shuffle(n, seed=args.seed)
                  .repeat().batch(args.batch_size))
            t = time.time()
            hist = model.fit(ds, epochs=epochs, steps_per_epoch=steps_per_epoch, validation_data=(x_hold, y_hold),
                             verbose=0)
            best = int(np.argmin(hist.history["val_loss"]))
            results[(w, n)] = (hist.history["val_loss"][best], hist.history["val_accuracy"][best])
            params[w] = model.count_params()
            print(f"  {args.model} {w:>4s} params {model.count_params():8d} n={n:6d}: best held-out loss "
                  f"{results[(w, n)][0]:.3f} acc {results[(w, n)][1]:.3f} ({time.time() - t:.0f} s)", flush=True)
    print(f"\nheld-out cross-entropy (best over training; accuracy), {args.num_classes} classes, "
          f"{args.image_size} px, {args.labels} labels, {args.steps} steps of batch {args.batch_size}, Adam {args.learning_rate:g}; class-prior baseline "
          f"loss {prior_loss:.3f}")
    print("| model | " + " | ".join(f"n={n}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for w in widths:
        print(f"| {args.model} {w} ({params[w] / 1e3:.1f}k) | " + " | ".join(f"{results[(w, n)][0]:.3f} ({results[(w, n)][1]:.2f})"
                                                   for n in sizes) + " |")


if __name__ == "__main__":
    main()
