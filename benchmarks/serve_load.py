"""Load benchmark of the local TF-Serving-compatible server, with a version swap in the middle.

    python benchmarks/serve_load.py --requests=10000 --clients=16

Exports a grouped-conv NFNet (version 1), starts `trainers/serve.py` on 127.0.0.1 (a free port), and sends
--requests predict requests (one PNG each, row format, keep-alive connections) from --clients concurrent clients.
Version 2 (a different model) is exported beforehand to a staging directory; when half of the requests are
done it is renamed into the base path next to version 1 (a deployment as it should be done: complete, then
atomically visible). The server hot-adds it (load, warm-up replay, AVAILABLE), moves to it and unloads version 1,
while the clients keep going. Every answer
is checked against both models' expected probabilities (1e-5), so an error is a non-200 answer, a failed
connection, or an answer from neither model. Prints latency percentiles, throughput, which version answered, and
the server's RSS before the load, after it, and its peak.

Bounded: exactly --requests requests, each with a --timeout, and the whole run stops after --max_seconds (the
remaining requests are counted as not sent). Only 127.0.0.1 is contacted. Exits 1 if any request failed.
"""
import base64
import concurrent.futures
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from absl import flags

from keras_nfnet import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer("requests", 10000, "Predict requests to send in all.")
flags.DEFINE_integer("clients", 16, "Concurrent clients (threads, one keep-alive connection each).")
flags.DEFINE_string("variant", "tiny", "NFNet variant to export (grouped convolutions).")
flags.DEFINE_integer("image_size", 32, "Evaluation resolution inside the exported graph.")
flags.DEFINE_integer("server_threads", 4, "--threads of the server.")
flags.DEFINE_float("timeout", 60.0, "Seconds one request may take.")
flags.DEFINE_float("max_seconds", 900.0, "Stop sending after this long (the rest count as not sent).")
flags.DEFINE_string("workdir", None, "Where the exports go (default: a temporary directory, removed after).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = [f"class{i}" for i in range(10)]


def _memory_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


def _model(seed):
    import keras
    import numpy as np

    from keras_nfnet.models import NFNet

    keras.utils.set_random_seed(seed)
    model = NFNet(FLAGS.variant, num_classes=len(CLASSES))
    classifier = model.get_layer("classifier")
    classifier.kernel.assign(np.random.default_rng(seed).normal(0, 3.0, classifier.kernel.shape).astype("float32"))
    return model


def _expected(model, png):
    import numpy as np
    import tensorflow as tf

    from keras_nfnet.data import preprocess

    batch = preprocess.preprocess_for_eval(tf.constant(png), FLAGS.image_size)[None]
    logits = np.asarray(model(batch, training=False), np.float64)[0]
    e = np.exp(logits - logits.max())
    return e / e.sum()


def main(argv):
    del argv
    import numpy as np
    import tensorflow as tf

    from keras_nfnet.export import export_for_serving

    workdir = FLAGS.workdir or tempfile.mkdtemp(prefix="serve_load_")
    base = os.path.join(workdir, "serving")
    models = {1: _model(1), 2: _model(2)}
    rng = np.random.default_rng(0)
    pngs = [tf.io.encode_png(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)).numpy() for _ in range(8)]
    bodies = [json.dumps({"instances": [{"b64": base64.b64encode(p).decode()}]}).encode() for p in pngs]
    expected = {v: np.stack([_expected(m, p) for p in pngs]) for v, m in models.items()}
    export_for_serving(models[1], base, "nfnet", version=1, class_names=CLASSES, image_size=FLAGS.image_size)
    staged = export_for_serving(models[2], os.path.join(workdir, "staging"), "nfnet", version=2,
                                class_names=CLASSES, image_size=FLAGS.image_size)

    server = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "trainers/serve.py"), f"--model_base_path={base}/nfnet",
         "--rest_api_port=0", f"--threads={FLAGS.server_threads}", "--file_system_poll_wait_seconds=0.5"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    log = []
    port = None
    deadline = time.time() + 300
    while time.time() < deadline and port is None:
        line = server.stdout.readline()
        if not line:
            break
        log.append(line)
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        port = int(match.group(1)) if match else None
    if port is None:
        server.kill()
        raise SystemExit("server did not start:\n" + "".join(log))
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()

    local = threading.local()
    counter = iter(range(FLAGS.requests))
    counter_lock = threading.Lock()
    results = []  # (index, seconds, status or error, version that answered)
    started = time.perf_counter()
    stop_at = started + FLAGS.max_seconds
    swap = {"requested_at": None, "first_v2": None, "available_at": None, "v1_end_at": None}
    half = threading.Event()

    def connection():
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=FLAGS.timeout)
        return local.conn

    def client():
        while time.perf_counter() < stop_at:
            with counter_lock:
                index = next(counter, None)
            if index is None:
                return
            if index == FLAGS.requests // 2:
                half.set()
            body = bodies[index % len(bodies)]
            t0 = time.perf_counter()
            try:
                conn = connection()
                conn.request("POST", "/v1/models/nfnet:predict", body=body,
                             headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                seconds = time.perf_counter() - t0
                if response.status != 200:
                    results.append((index, seconds, f"HTTP {response.status}: {payload[:200]!r}", None))
                    continue
                got = np.array(json.loads(payload)["predictions"][0]["probabilities"])
                version = next((v for v, e in expected.items()
                                if np.abs(got - e[index % len(bodies)]).max() < 1e-5), None)
                if version == 2 and swap["first_v2"] is None:
                    swap["first_v2"] = time.perf_counter() - started
                results.append((index, seconds, 200 if version else "answer from neither model", version))
            except (OSError, http.client.HTTPException) as error:
                results.append((index, time.perf_counter() - t0, f"{type(error).__name__}: {error}", None))
                local.conn = None

    def watch_status():  # when version 2 became AVAILABLE and version 1 END (status polled every 0.2 s)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while swap["v1_end_at"] is None and time.perf_counter() < min(stop_at, clients_done[0] + 60):
            conn.request("GET", "/v1/models/nfnet")
            states = {v["version"]: v["state"] for v in json.loads(conn.getresponse().read())["model_version_status"]}
            now = time.perf_counter() - started
            if states.get("2") == "AVAILABLE" and swap["available_at"] is None:
                swap["available_at"] = now
            if states.get("1") == "END":
                swap["v1_end_at"] = now
            time.sleep(0.2)
        conn.close()

    clients_done = [float("inf")]  # when the last client finished: the watcher gives the swap 60 s more
    memory_before = _memory_mb(server.pid)
    with concurrent.futures.ThreadPoolExecutor(FLAGS.clients + 1) as pool:
        futures = [pool.submit(client) for _ in range(FLAGS.clients)]
        half.wait(timeout=FLAGS.max_seconds)
        swap["requested_at"] = time.perf_counter() - started
        os.rename(staged, os.path.join(base, "nfnet", "2"))
        watcher = pool.submit(watch_status)
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
        clients_done[0] = time.perf_counter()
        watcher.result()
    time.sleep(2)  # let the unload of version 1 finish
    memory_after = _memory_mb(server.pid)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/v1/models/nfnet")
    status = json.loads(conn.getresponse().read())
    conn.close()
    server.send_signal(signal.SIGTERM)
    try:
        exit_code = server.wait(60)
    except subprocess.TimeoutExpired:
        server.kill()
        exit_code = "killed"

    errors = [r for r in results if r[2] != 200]
    latencies = np.array([r[1] for r in results if r[2] == 200]) * 1000
    by_version = {v: sum(1 for r in results if r[3] == v) for v in (1, 2)}
    p50, p90, p99 = np.percentile(latencies, [50, 90, 99]) if latencies.size else (float("nan"),) * 3
    print(f"\n{len(results)} of {FLAGS.requests} requests sent from {FLAGS.clients} clients in {elapsed:.1f} s "
          f"({len(results) / elapsed:.0f} req/s); server threads {FLAGS.server_threads}; NFNet-{FLAGS.variant} at "
          f"{FLAGS.image_size} px, one 48x40 PNG per request")
    print(f"errors: {len(errors)}" + (f"  first: {errors[:3]}" if errors else ""))
    print(f"latency ms: p50 {p50:.1f}  p90 {p90:.1f}  p99 {p99:.1f}  max {latencies.max():.1f}")
    def at(key):
        return f"{swap[key]:.1f} s" if swap[key] is not None else "never"

    print(f"answered by version 1: {by_version[1]}, by version 2: {by_version[2]}; version 2 moved in at "
          f"{at('requested_at')}, AVAILABLE at {at('available_at')}, first answer from it at {at('first_v2')}, "
          f"version 1 END at {at('v1_end_at')}")
    print(f"server RSS: before {memory_before['VmRSS']:.0f} MB, after {memory_after['VmRSS']:.0f} MB, "
          f"peak {memory_after['VmHWM']:.0f} MB")
    print(f"final status: {json.dumps(status)}; server exit code {exit_code}")
    if FLAGS.workdir is None:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    if errors or len(results) < FLAGS.requests:
        raise SystemExit(1)


if __name__ == "__main__":
    cli.run(main)
