"""One test per private library API in keras_nfnet/compat.py, each against an independent expectation (numbers
worked out by hand, public Keras/TF APIs), failing with the call's name and the installed versions. Plus: every
entry of compat.PRIVATE_CALLS has its test here, and no other module of the package reaches into library
internals (so a new private call cannot slip in outside compat.py)."""
import ast
import functools
import inspect
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_nfnet import compat

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED_DIRS = ("keras_nfnet", "trainers", "datasets", "benchmarks")


def covers(call):
    """Turn any failure of the decorated test into one line naming the private call and the versions."""
    def decorate(test):
        @functools.wraps(test)
        def run(*args, **kwargs):
            try:
                return test(*args, **kwargs)
            except Exception as error:  # AssertionError included
                pytest.fail(f"private API {compat.PRIVATE_CALLS[call]} changed (installed: "
                            f"{compat.installed_versions()}; tested with {compat.TESTED_WITH}): "
                            f"{type(error).__name__}: {error}")
        run.covers = call
        return run
    return decorate


def _mirrored():
    compat.advance_collective_keys()
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@covers("no_automatic_dependency_tracking")
def test_no_automatic_dependency_tracking():
    class Holder(keras.layers.Layer):
        def tracked(self):
            self.a = [1, 2]

        @compat.no_automatic_dependency_tracking
        def untracked(self):
            self.b = [1, 2]

    holder = Holder()
    holder.tracked()
    holder.untracked()
    assert type(holder.a).__name__ == "TrackedList", type(holder.a)
    assert type(holder.b).__name__ != "TrackedList", type(holder.b)


@covers("flatten_layers")
def test_flatten_layers():
    inner = keras.Sequential([keras.layers.Dense(3, name="d1"), keras.layers.Dense(2, name="d2")], name="inner")
    inputs = keras.Input((4,))
    outer = keras.Model(inputs, keras.layers.Dense(1, name="head")(inner(inputs)), name="outer")

    def walk(layer):  # the public .layers, recursively
        found = [layer]
        for child in getattr(layer, "layers", []):
            found += walk(child)
        return found

    def ids(layers):  # Sequential keeps an InputLayer of its own that .layers does not list
        return {id(layer) for layer in layers if not isinstance(layer, keras.layers.InputLayer)}

    expected = ids(walk(outer))
    assert ids(compat.flatten_layers(outer)) == expected
    assert ids(compat.flatten_layers(outer, include_self=False)) == expected - {id(outer)}
    assert ids(compat.flatten_layers(outer, include_self=False, recursive=False)) == ids(outer.layers)
    assert "d1" not in {layer.name for layer in compat.flatten_layers(outer, recursive=False)}


@covers("gradient_sum_guard")
def test_gradient_sum_guard():
    """Each replica applies gradient 1 to w = 0 with SGD(lr=1): Keras sums over the 2 replicas (w = -2) unless
    the guard is active, when each replica's gradient is used as it is (w = -1)."""
    strategy = _mirrored()
    results = {}
    for skip in (False, True):
        with strategy.scope():
            w = keras.Variable(0.0)
            sgd = keras.optimizers.SGD(1.0)
            sgd.build([w])
        assert compat.install_gradient_sum_guard(sgd, lambda: skip)
        strategy.run(tf.function(lambda: sgd.apply([tf.constant(1.0)], [w])))
        results[skip] = float(w.value.numpy())
    assert results == {False: -2.0, True: -1.0}


@covers("optimizer_strategy")
def test_optimizer_strategy():
    strategy = _mirrored()
    with strategy.scope():
        inside = keras.optimizers.SGD(0.1)
    outside = keras.optimizers.SGD(0.1)
    assert compat.optimizer_strategy(inside) is strategy
    assert compat.optimizer_strategy(outside) is tf.distribute.get_strategy()


@covers("variable_index")
def test_variable_index():
    variables = [keras.Variable(np.zeros(n, "float32")) for n in (1, 2, 3)]
    sgd = keras.optimizers.SGD(0.1)
    sgd.build(variables)
    assert [compat.variable_index(sgd, v) for v in reversed(variables)] == [2, 1, 0]


@covers("own_variables")
def test_own_variables():
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    sgd.build([keras.Variable(1.0), keras.Variable(2.0)])
    assert [id(v) for v in compat.own_variables(sgd)] == [id(v) for v in sgd.variables]
    assert sum(v.name.startswith("sgd_momentum") or "momentum" in v.path for v in compat.own_variables(sgd)) == 2


@covers("optimizer_trainable_variables")
def test_optimizer_trainable_variables():
    variables = [keras.Variable(1.0), keras.Variable(2.0)]
    sgd = keras.optimizers.SGD(0.1)
    sgd.build(variables)
    assert [id(v) for v in compat.optimizer_trainable_variables(sgd)] == [id(v) for v in variables]


@covers("ema_averages")
def test_ema_averages():
    """SGD(lr=1), gradient 1, w = 1: after step 1 w = 0 and Keras sets the average to w (0); after step 2
    w = -1 and the average is 0.5 * 0 + 0.5 * -1 = -0.5."""
    w = keras.Variable(1.0)
    sgd = keras.optimizers.SGD(1.0, use_ema=True, ema_momentum=0.5)
    assert not compat.has_ema_averages(keras.optimizers.SGD(1.0))
    for _ in range(2):
        sgd.apply([tf.constant(1.0)], [w])
    assert compat.has_ema_averages(sgd)
    assert [float(a.numpy()) for a in compat.ema_averages(sgd)] == [-0.5]

    class Wrapper(compat.ForwardEMAAverages):
        inner_optimizer = sgd

    assert compat.ema_averages(Wrapper()) is compat.ema_averages(sgd)
    # The name the forwarding property provides is the one Keras's EMA callback reads.
    assert "_model_variables_moving_average" in inspect.getsource(keras.callbacks.SwapEMAWeights)


@covers("overwrites_with_gradient")
def test_overwrites_with_gradient():
    overwritten, normal = keras.Variable(1.0), keras.Variable(2.0)
    overwritten.overwrite_with_gradient = True
    sgd = keras.optimizers.SGD(0.1)
    sgd.build([overwritten, normal])
    assert compat.overwrites_with_gradient(sgd, overwritten) is True
    assert compat.overwrites_with_gradient(sgd, normal) is False


@covers("ema_hooks")
def test_ema_hooks():
    calls = []

    class Hooked(compat.OptimizerEMAHooks, keras.optimizers.SGD):
        def update_ema_averages(self, trainable_variables):
            calls.append("update")
            for variable, average in zip(trainable_variables, compat.ema_averages(self)):
                average.assign(variable * 10.0)

        def write_ema_averages(self, trainable_variables):
            calls.append("write")
            return self.keras_write_ema_averages(trainable_variables)

    w = keras.Variable(1.0)
    sgd = Hooked(1.0, use_ema=True)
    sgd.apply([tf.constant(1.0)], [w])  # w = 0, then the hook sets the average to 10 * w = 0
    sgd.apply([tf.constant(-1.0)], [w])  # w = 1, average 10
    sgd.finalize_variable_values([w])  # Keras's own write: w takes the average
    assert calls == ["update", "update", "write"]
    assert float(w.numpy()) == 10.0


@covers("unscale_loss_for_distribution")
def test_unscale_loss_for_distribution():
    assert float(compat.unscale_loss_for_distribution(tf.constant(3.0))) == 3.0
    with _mirrored().scope():
        assert float(compat.unscale_loss_for_distribution(tf.constant(3.0))) == 6.0


@covers("merge_call")
def test_merge_call():
    """From both replicas' context, `add` runs once across replicas: each copy of v gets +1, not +2."""
    strategy = _mirrored()
    with strategy.scope():
        v = tf.Variable(0.0)
    seen = []

    def add(merged_strategy, delta):
        seen.append(merged_strategy)
        merged_strategy.extended.update(v, lambda var, d: var.assign_add(d), args=(delta,), group=False)

    strategy.run(tf.function(lambda: compat.merge_call(add, tf.constant(1.0))))
    assert [float(x.numpy()) for x in strategy.experimental_local_results(v)] == [1.0, 1.0]
    assert seen and all(s is strategy for s in seen)


@covers("call_has_training_arg")
def test_call_has_training_arg():
    class WithTraining(keras.Model):
        def call(self, x, training=None):
            return x

    class Without(keras.Model):
        def call(self, x):
            return x

    assert compat.call_has_training_arg(WithTraining()) is True
    assert compat.call_has_training_arg(Without()) is False


def _compiled_linear():
    """y = x @ [1, 1] with an L2(0.5) penalty on the kernel, mean squared error."""
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(
        1, use_bias=False, kernel_initializer="ones", kernel_regularizer=keras.regularizers.L2(0.5))])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    return model


@covers("compute_loss")
def test_compute_loss():
    model = _compiled_linear()
    x, y = np.array([[1.0, 2.0]], "float32"), np.array([[0.0]], "float32")
    loss = compat.compute_loss(model, x=x, y=y, y_pred=model(x), training=True)
    assert float(loss) == pytest.approx(9.0 + 0.5 * 2.0)  # (3 - 0)^2 + 0.5 * (1^2 + 1^2)


@covers("loss_tracker")
def test_loss_tracker():
    model = _compiled_linear()
    tracker = compat.loss_tracker(model)
    assert tracker.name == "loss" and any(m is tracker for m in model.metrics)
    tracker.update_state(4.0)
    tracker.update_state(2.0)
    assert float(tracker.result()) == 3.0


@covers("symbolic_build")
def test_symbolic_build():
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    model = keras.Sequential([keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    compat.symbolic_build(model, (x, y))
    assert model.built and model.optimizer.built

    calls = []
    fresh = keras.Sequential([keras.layers.Dense(1)])
    fresh.compile(optimizer="sgd", loss="mse")

    def build(iterator=None, data_batch=None):
        calls.append(iterator is not None or data_batch is not None)
        compat.symbolic_build(fresh, (x, y))

    compat.replace_symbolic_build(fresh, build)
    fresh.fit(x, y, epochs=1, verbose=0)
    assert calls == [True], "model.fit no longer builds through _maybe_symbolic_build"


@covers("advance_collective_keys")
def test_advance_collective_keys():
    before = tf.distribute.MirroredStrategy._collective_key_base
    compat.advance_collective_keys(7)
    assert tf.distribute.MirroredStrategy._collective_key_base == before + 7
    # Two strategies with differently shaped all-reduces in one process need the fresh keys.
    for shape in ((2,), (3,)):
        strategy = _mirrored()
        value = strategy.run(tf.function(lambda: tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, tf.ones(shape))))
        np.testing.assert_array_equal(strategy.experimental_local_results(value)[0], np.full(shape, 2.0))


@covers("fill_rectangle")
def test_fill_rectangle():
    image = np.zeros((8, 8, 3), np.uint8)
    out = compat.fill_rectangle(tf.constant(image), 4, 3, 2, 1, 128).numpy()
    expected = image.copy()
    expected[2:4, 2:6] = 128  # rows centre 3 +- 1, columns centre 4 +- 2 (end exclusive)
    np.testing.assert_array_equal(out, expected)


@covers("saved_model_proto")
def test_saved_model_proto(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: x + 1.0, input_signature=[tf.TensorSpec([None], tf.float32)])
    tf.saved_model.save(module, str(tmp_path), signatures={"serving_default": module.f})
    proto = compat.saved_model_proto()
    proto.ParseFromString((tmp_path / "saved_model.pb").read_bytes())
    assert "serving_default" in proto.meta_graphs[0].signature_def


def test_setup_py_accepts_the_versions_the_suite_runs_on():
    """setup.py's Keras and TensorFlow ranges, compat.TESTED_WITH and the installed releases agree: a run on a
    release outside the accepted range fails here (widen setup.py and TESTED_WITH once the rest passes)."""
    import importlib.metadata
    import re

    from packaging.requirements import Requirement

    tree = ast.parse((ROOT / "setup.py").read_text())
    requires = next(ast.literal_eval(k.value) for node in ast.walk(tree) if isinstance(node, ast.keyword)
                    for k in [node] if k.arg == "install_requires")
    accepted = {r.name: r.specifier for r in map(Requirement, requires) if r.name in ("keras", "tensorflow")}
    tested = dict(re.findall(r"(keras|tensorflow) (\d+\.\d+)", compat.TESTED_WITH))
    assert set(accepted) == set(tested) == {"keras", "tensorflow"}, (accepted, tested)
    for name, specifier in accepted.items():
        installed = importlib.metadata.version(name)
        assert f"{tested[name]}.0" in specifier, f"compat.TESTED_WITH {name} {tested[name]} vs setup.py {specifier}"
        assert installed in specifier, (f"installed {name} {installed} is outside setup.py's {name}{specifier}: "
                                        "run the suite on it, then widen setup.py and compat.TESTED_WITH")


def test_every_private_call_has_a_test():
    tested = {getattr(f, "covers", None) for f in globals().values() if callable(f)}
    missing = sorted(set(compat.PRIVATE_CALLS) - tested)
    assert not missing, f"compat.PRIVATE_CALLS entries without a test in tests/test_compat.py: {missing}"


def _library_private_names():
    """`_`-prefixed members of the Keras and TensorFlow objects the package works with."""
    w = keras.Variable(1.0)
    sgd = keras.optimizers.SGD(0.1, use_ema=True)
    sgd.build([w])
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    objects = [sgd, model, model.layers[0], w, keras.callbacks.Callback(), keras.losses.MeanSquaredError(),
               keras.initializers.Zeros(), keras.metrics.Mean(), tf.distribute.MirroredStrategy,
               tf.distribute.get_strategy(), tf.distribute.get_strategy().extended]
    return {n for o in objects for n in dir(o) if n.startswith("_") and not n.startswith("__")}


def _own_attributes(tree):
    """Names the package's own classes set on themselves (self.X = ...): those are not the libraries'."""
    return {t.attr for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target])
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"}


def _violations(path, private_names, root=ROOT, own=frozenset()):
    tree = ast.parse(path.read_text(), filename=str(path))
    methods = {id(item) for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body}
    found = []
    for node in ast.walk(tree):
        line = f"{path.relative_to(root)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for module in modules:
                if module.startswith(("keras.src", "tensorflow.python", "tensorflow.core", "keras._")):
                    found.append(f"{line} imports {module}")
        elif isinstance(node, ast.Attribute):
            if node.attr == "__internal__":
                found.append(f"{line} uses tf.__internal__")
            elif node.attr.startswith("_") and not node.attr.startswith("__"):
                owner = node.value
                if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Name) and owner.func.id == "super":
                    found.append(f"{line} calls super().{node.attr}")
                elif node.attr in private_names and node.attr not in own:
                    found.append(f"{line} uses .{node.attr}")
                elif isinstance(owner, ast.Name) and owner.id in ("tf", "keras", "tfm_augment", "augment"):
                    found.append(f"{line} uses {owner.id}.{node.attr}")
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) in methods and \
                node.name in private_names:
            found.append(f"{line} overrides {node.name}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in private_names:
            found.append(f"{line} names {node.value!r}")
    return found


def test_no_private_api_outside_compat():
    private_names = _library_private_names()
    files = [p for d in SCANNED_DIRS for p in (ROOT / d).rglob("*.py")
             if "__pycache__" not in p.parts and p != ROOT / "keras_nfnet" / "compat.py"]
    own = {n for path in files for n in _own_attributes(ast.parse(path.read_text()))}
    found = [v for path in files for v in _violations(path, private_names, own=own)]
    assert not found, "private Keras/TensorFlow APIs used outside keras_nfnet/compat.py:\n" + "\n".join(found)


def test_the_scan_catches_a_private_call(tmp_path):
    """The scan above must be able to fail: a file with the kinds of private use it looks for."""
    sample = tmp_path / "sample.py"
    sample.write_text("from keras.src import tree\n"
                      "import tensorflow as tf\n"
                      "class Opt:\n"
                      "    def _get_variable_index(self, variable):\n"
                      "        tf.__internal__.distribute.interim.maybe_merge_call(None, None)\n"
                      "        self.inner._get_variable_index(None)\n"
                      "        return super()._x()\n")
    found = _violations(sample, {"_get_variable_index"}, root=tmp_path)
    assert len(found) == 5, found


def test_compat_imports_no_library_until_used():
    """The model server runs without Keras and imports compat (for the SavedModel proto)."""
    import subprocess
    import sys

    script = ("import sys; sys.modules['keras'] = None\n"
              "from keras_nfnet import compat\n"
              "assert compat.saved_model_proto().meta_graphs == []\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
