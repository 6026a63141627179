"""Model throughput: training and inference images/s of an NFNet, next to the FLOP/s it implies, this machine's
matmul peak, and (when a PyTorch + timm interpreter is given) timm's matching model measured in the same run.

Each row runs in its own fresh process, one after another (the Keras backend is fixed at import, and rows must not
share threads). Training is one step of the recipe's optimizer, AGC(Nesterov SGD), on softmax cross-entropy;
inference is the model's forward pass in inference mode. Training FLOPs per image = 6 x MACs, inference 2 x MACs
(MACs counted by `keras_nfnet.count_macs`, which reproduces the published figures).

    python benchmarks/bench_model_throughput.py                                  # F0, 192 px, batch 8
    python benchmarks/bench_model_throughput.py --peer_python /path/to/torch-venv/bin/python   # + timm baseline
    python benchmarks/bench_model_throughput.py --variant S1 --image_size 64 --batch 64 --backends tensorflow
    python benchmarks/bench_model_throughput.py --forms split,native           # the grouped-conv kernels

The peer environment is optional and separate from the project's: `python -m venv peer && peer/bin/pip install
torch timm` (see docs/models.md). Run on an otherwise idle machine and compare ratios from one run.
"""
import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMM_NAMES = {f"F{i}": f"dm_nfnet_f{i}" for i in range(7)}  # timm's DeepMind-weight NFNets (same architecture)


def _timed_steps(step, warmup, steps, min_seconds):
    """Seconds of the first call (tracing/compilation included) and the mean seconds per steady-state call."""
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    start, done = time.perf_counter(), 0
    while done < steps or time.perf_counter() - start < min_seconds:
        step()
        done += 1
    return first, (time.perf_counter() - start) / done


class _BatchClock:
    """A keras callback: times every training batch, stops `fit` once `steps` batches and `min_seconds` are done."""

    def __new__(cls, warmup, steps, min_seconds):
        import keras

        class Clock(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.start, self.ends = time.perf_counter(), []

            def on_train_batch_end(self, batch, logs=None):
                self.ends.append(time.perf_counter())
                timed = self.ends[warmup:]
                if len(timed) > steps and timed[-1] - timed[0] >= min_seconds:
                    self.model.stop_training = True

            def result(self):
                timed = self.ends[warmup:]
                return {"first_s": self.ends[0] - self.start, "step_s": (timed[-1] - timed[0]) / (len(timed) - 1)}

        return Clock()


def worker_keras(args):
    import numpy as np
    import keras
    import tensorflow as tf

    import keras_nfnet
    from keras_nfnet import layers

    keras.utils.set_random_seed(0)
    if args.corpus:  # fed by the exactly-once pipeline (decode, crop, flip, resize, normalise) from a corpus
        from keras_nfnet.data import corpus, pipeline

        num_classes = corpus.load_metadata(args.corpus).num_classes
        data = pipeline.train_dataset(args.corpus, "train", args.batch, args.image_size, seed=0)
    else:  # one fixed batch, repeated: the model alone
        num_classes = args.num_classes
        rng = np.random.default_rng(0)
        x = rng.standard_normal((args.batch, args.image_size, args.image_size, 3)).astype("float32")
        y = np.eye(num_classes, dtype="float32")[rng.integers(0, num_classes, args.batch)]
        data = tf.data.Dataset.from_tensors((x, y)).repeat()
    with layers.use_grouped_conv_form(args.form):
        model = keras_nfnet.NFNet(args.variant, num_classes=num_classes, dtype=args.dtype)
        if args.mode == "train":
            opt = keras_nfnet.AGC(keras.optimizers.SGD(0.01, momentum=0.9, nesterov=True), clip_factor=0.01)
            model.compile(optimizer=opt, loss=keras.losses.CategoricalCrossentropy(from_logits=True),
                          jit_compile=args.jit_compile)
            clock = _BatchClock(args.warmup, args.steps, args.min_seconds)
            model.fit(data, steps_per_epoch=10 ** 9, epochs=1, verbose=0, callbacks=[clock])
            return clock.result()
        if args.jit_compile:
            model.compile(jit_compile=True)
        x = np.asarray(next(iter(data))[0])
        first, per_step = _timed_steps(lambda: model.predict_on_batch(x), args.warmup, args.steps, args.min_seconds)
        return {"first_s": first, "step_s": per_step}


def worker_timm(args):
    import torch
    import timm

    torch.manual_seed(0)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model = timm.create_model(TIMM_NAMES[args.variant], pretrained=False, num_classes=args.num_classes)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, args.num_classes, (args.batch,))
    if args.mode == "train":
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
        loss_fn = torch.nn.CrossEntropyLoss()

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x), y).backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                model(x)

    first, per_step = _timed_steps(step, args.warmup, args.steps, args.min_seconds)
    return {"first_s": first, "step_s": per_step, "versions": f"torch {torch.__version__}, timm {timm.__version__}"}


def worker_peak(args):
    """The machine's float32 matmul GFLOP/s (4096^2, best of 5): the better of numpy's BLAS and TensorFlow's
    oneDNN, the basis of the 'of peak' column."""
    import numpy as np
    import tensorflow as tf

    a = np.random.default_rng(0).standard_normal((4096, 4096)).astype("float32")
    t = tf.constant(a)
    tf_matmul = tf.function(lambda m: tf.matmul(m, m))
    candidates = [lambda: a @ a, lambda: tf_matmul(t).numpy()]
    best = min(_timed_steps(f, 1, 1, 0)[1] for f in candidates for _ in range(5))
    return {"gflops": 2 * 4096 ** 3 / best / 1e9}


def _run_row(python, worker, args, extra_env):
    cmd = [python, os.path.abspath(__file__), "--worker", worker, "--variant", args.variant,
           "--image_size", str(args.image_size), "--batch", str(args.batch), "--num_classes", str(args.num_classes),
           "--warmup", str(args.warmup), "--steps", str(args.steps), "--min_seconds", str(args.min_seconds),
           "--mode", extra_env.pop("_mode"), "--form", extra_env.pop("_form", "auto"),
           "--dtype", args.dtype, "--threads", str(args.threads)]
    if extra_env.pop("_corpus", None):
        cmd += ["--corpus", args.corpus]
    if extra_env.pop("_jit", False):
        cmd.append("--jit_compile")
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3", **extra_env}
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), TF_NUM_INTRAOP_THREADS=str(args.threads),
                   XLA_FLAGS=f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={args.threads}")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        tail = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0][:160]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="F0")
    parser.add_argument("--image_size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--backends", default="tensorflow,jax", help="comma-separated Keras backends")
    parser.add_argument("--forms", default="auto", help="grouped-conv forms to run: auto, native, split")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--dtype", default="float32", help="Keras dtype policy, e.g. mixed_bfloat16")
    parser.add_argument("--jit_compile", action="store_true", help="TensorFlow backend: compile steps with XLA")
    parser.add_argument("--corpus", help="also train fed by the input pipeline from this corpus (else a fixed batch)")
    parser.add_argument("--peer_python", default=os.environ.get("PEER_PYTHON"),
                        help="an interpreter with torch + timm for the baseline (default: $PEER_PYTHON)")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads for every row (0: library default)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all rows; each row keeps its best")
    parser.add_argument("--warmup", type=int, default=2, help="calls before timing (the first includes tracing)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--min_seconds", type=float, default=10.0)
    parser.add_argument("--worker", choices=["keras", "timm", "peak"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="train", help=argparse.SUPPRESS)
    parser.add_argument("--form", default="auto", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        result = {"keras": worker_keras, "timm": worker_timm, "peak": worker_peak}[args.worker](args)
        print(json.dumps(result))
        return

    sys.path.insert(0, ROOT)
    from keras_nfnet.flops import count_macs

    macs = count_macs(args.variant, args.image_size, num_classes=args.num_classes)
    peak = _run_row(sys.executable, "peak", args, {"_mode": "infer"})
    peak_flops = peak.get("gflops", float("nan")) * 1e9
    print(f"{args.variant} at {args.image_size} px, batch {args.batch}, {args.dtype}; {macs / 1e6:,.1f} MMACs/image; "
          f"float32 matmul peak {peak_flops / 1e9:.0f} GFLOP/s (measured in this run)", flush=True)

    plan = []  # (label, mode, python, worker, env)
    for mode in args.modes.split(","):
        if args.peer_python and args.variant in TIMM_NAMES and args.dtype == "float32":
            plan.append(("timm (PyTorch eager)", mode, args.peer_python, "timm", {"_mode": mode}))
        for backend in args.backends.split(","):
            for form in args.forms.split(","):
                label = f"keras_nfnet {backend}, form {form}" + (", XLA" if args.jit_compile else "")
                env = {"_mode": mode, "_form": form, "_jit": args.jit_compile, "KERAS_BACKEND": backend}
                if backend == "jax":
                    env["JAX_PLATFORMS"] = "cpu"
                plan.append((label, mode, sys.executable, "keras", env))
                if args.corpus and mode == "train":
                    plan.append((label + ", fed by pipeline", mode, sys.executable, "keras", {**env, "_corpus": True}))
    # Rows alternate over `repeats` rounds and keep their best round, so a passing load spike hits one round.
    best = {}
    for round_ in range(args.repeats):
        for label, mode, python, worker, env in plan:
            r = _run_row(python, worker, args, dict(env))
            kept = best.get((label, mode))
            if kept is None or "error" in kept or ("step_s" in r and r["step_s"] < kept["step_s"]):
                best[(label, mode)] = r
            print(f"  measured (round {round_ + 1}/{args.repeats}): {label} {mode}", flush=True)
    rows = [(label, mode, best[(label, mode)]) for label, mode, *_ in plan]

    header = f"| {'model':<58} | mode  | first step s | s/step | images/s | GFLOP/s | of peak | vs timm |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for label, mode, r in rows:
        if "error" in r:
            print(f"| {label:<58} | {mode:<5} | failed: {r['error']}")
            continue
        flops_per_image = (6 if mode == "train" else 2) * macs
        ips = args.batch / r["step_s"]
        base = next((b for lb, m, b in rows if lb.startswith("timm") and m == mode and "step_s" in b), None)
        ratio = f"{ips / (args.batch / base['step_s']):.2f}x" if base else "-"
        print(f"| {label:<58} | {mode:<5} | {r['first_s']:12.1f} | {r['step_s']:6.3f} | {ips:8.2f} | "
              f"{ips * flops_per_image / 1e9:7.1f} | {ips * flops_per_image / peak_flops:7.1%} | {ratio:>7} |")
    versions = next((r["versions"] for lb, _, r in rows if "versions" in r), None)
    if versions:
        print(f"baseline: {versions}")


if __name__ == "__main__":
    main()
