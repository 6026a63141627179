"""Query a model served over TF Serving's REST API (ours or TF Serving's) and print its predictions.

    python trainers/query.py --url=http://127.0.0.1:8501/v1/models/digits image1.png image2.jpg
    python trainers/query.py --url=http://127.0.0.1:8501/v1/models/digits --corpus=/data/digits --split=test --count=4

A plain client: the Python standard library only (urllib, base64, json), as any TF Serving client would be.
With --corpus it sends the first --count images of a split (--count=0: all) in requests of --batch_size, prints
each true label next to the prediction (at most --show of them) and how many top-1 predictions were right.
"""
import base64
import json
import urllib.error
import urllib.request

from absl import app, flags
from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("url", "http://127.0.0.1:8501/v1/models/model", "The model's URL: http://host:port/v1/models/<name>")
flags.DEFINE_string("corpus", None, "Send images of this corpus instead of files.")
flags.DEFINE_string("split", "test", "Split of --corpus.")
flags.DEFINE_integer("count", 4, "Images to send from --corpus (0 = the whole split).")
flags.DEFINE_integer("show", None, "Print at most this many predictions (default: all).")
flags.DEFINE_integer("batch_size", 32, "Images per request.")
flags.DEFINE_float("timeout", 30.0, "Seconds to wait for the answer.")


def predict(url, images, timeout=30.0):
    """POST encoded images to `<url>:predict` in row format; returns the list of predictions."""
    body = json.dumps({"instances": [{"b64": base64.b64encode(b).decode("ascii")} for b in images]}).encode()
    request = urllib.request.Request(url + ":predict", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{url}:predict answered {error.code}: {error.read().decode(errors='replace')}") from None


def _corpus_images(corpus, split, count):
    import tensorflow as tf

    from keras_nfnet.data.corpus import decode_example, load_metadata

    info = load_metadata(corpus)
    out = []
    for shard in info.split(split).shard_paths(corpus):
        for record in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            example = decode_example(record)
            out.append((example["image"], ", ".join(info.class_names[i] for i in example["labels"])))
            if len(out) == count > 0:
                return out
    return out


def main(argv):
    if FLAGS.corpus:
        items = _corpus_images(FLAGS.corpus, FLAGS.split, FLAGS.count)
    else:
        if len(argv) < 2:
            raise app.UsageError("give image files, or --corpus")
        items = []
        for path in argv[1:]:
            with open(path, "rb") as f:
                items.append((f.read(), None))
    if FLAGS.batch_size < 1:
        raise app.UsageError("--batch_size must be >= 1")
    images = [image for image, _ in items]
    predictions = []
    for start in range(0, len(images), FLAGS.batch_size):
        predictions += predict(FLAGS.url, images[start:start + FLAGS.batch_size], FLAGS.timeout)
    right = 0
    for i, ((_, truth), prediction) in enumerate(zip(items, predictions)):
        ranked = ", ".join(f"{name} {prediction['probabilities'][cid]:.3f}"
                           for name, cid in zip(prediction["top_k_names"], prediction["top_k_ids"]))
        label = f" (true: {truth})" if truth is not None else (f" ({argv[1 + i]})" if not FLAGS.corpus else "")
        if FLAGS.show is None or i < FLAGS.show:
            print(f"image {i}{label}: {ranked}")
        right += truth is not None and prediction["top_k_names"][0] in truth.split(", ")
    if FLAGS.corpus:
        print(f"{right} of {len(items)} top-1 predictions right ({right / max(len(items), 1):.4f})")


if __name__ == "__main__":
    cli.run(main, positional=True)
