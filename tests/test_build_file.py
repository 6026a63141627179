"""BUILD must really cover the sources and really run the tests: every .py file of the library, the trainers and
the producers belongs to a target, every listed file exists, every test file has a py_test whose `main` is the
pytest entry point and whose `args` name its own file, and MODULE.bazel provides the Python rules and the pip hub
that BUILD loads, from a lock that matches setup.py. Parsed with `ast` (BUILD and MODULE.bazel are Starlark,
whose call syntax Python can read), so no Bazel is needed here."""
import ast
import importlib.util
import pathlib
import re

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parent.parent
COVERED_DIRS = ("keras_nfnet", "trainers", "datasets")
ENTRY_POINT = "tests/pytest_main.py"


def _calls(path):
    return [node for node in ast.walk(ast.parse(path.read_text(), filename=path.name))
            if isinstance(node, ast.Call)]


def _literal(node):
    return ast.literal_eval(node)


def _build_targets():
    """(rule, name, {keyword: node}) for each py_* call in BUILD."""
    return [(node.func.id, node.keywords) for node in _calls(ROOT / "BUILD")
            if isinstance(node.func, ast.Name) and node.func.id.startswith("py_")]


def _targets():
    targets = []
    for rule, keywords in _build_targets():
        kwargs = {k.arg: k.value for k in keywords}
        srcs = [elt.value for elt in kwargs["srcs"].elts] if "srcs" in kwargs else []
        targets.append((rule, kwargs["name"].value, srcs))
    return targets


def _test_targets():
    for rule, keywords in _build_targets():
        if rule == "py_test":
            kwargs = {k.arg: k.value for k in keywords}
            yield kwargs["name"].value, kwargs


def test_every_source_file_is_in_a_target():
    listed = {src for _, _, srcs in _targets() for src in srcs}
    sources = {
        str(p.relative_to(ROOT))
        for d in COVERED_DIRS
        for p in (ROOT / d).rglob("*.py")
        if "__pycache__" not in p.parts
    }
    missing = sorted(sources - listed)
    assert not missing, f"not in any BUILD target: {missing}"


def test_every_listed_file_exists():
    stale = sorted(src for _, _, srcs in _targets() for src in srcs if not (ROOT / src).is_file())
    assert not stale, f"BUILD lists files that do not exist: {stale}"


def test_every_test_file_has_a_py_test():
    tested = {src for kind, _, srcs in _targets() if kind == "py_test" for src in srcs}
    tests = {str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py")}
    missing = sorted(tests - tested)
    assert not missing, f"test files without a py_test target: {missing}"


def test_target_names_are_unique():
    names = [name for _, name, _ in _targets()]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_every_test_target_runs_its_own_file_through_the_entry_point():
    """A pytest file as `main` has no entry point, so the target would pass without running a test."""
    wrong = []
    for name, kwargs in _test_targets():
        srcs = _literal(kwargs["srcs"])
        tests = [src for src in srcs if src != ENTRY_POINT]
        main = _literal(kwargs["main"]) if "main" in kwargs else None
        args = _literal(kwargs["args"]) if "args" in kwargs else None
        if main != ENTRY_POINT or ENTRY_POINT not in srcs:
            wrong.append(f"{name}: main={main!r}, srcs={srcs} (needs main = {ENTRY_POINT!r}, listed in srcs)")
        elif len(tests) != 1 or args != tests or tests[0] != f"tests/{name}.py":
            wrong.append(f"{name}: args={args!r} for srcs {srcs} (args must name the target's own test file)")
    assert not wrong, "\n".join(wrong)


def _module_calls():
    """{function name: [keywords of each call]} in MODULE.bazel, names dotted as written (pip.parse)."""
    calls = {}
    for node in _calls(ROOT / "MODULE.bazel"):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else f"{func.value.id}.{func.attr}"
        kwargs = {k.arg: _literal(k.value) for k in node.keywords}
        calls.setdefault(name, []).append((kwargs, [_literal(a) if isinstance(a, ast.Constant) else a.id
                                                    for a in node.args]))
    return calls


def test_module_file_provides_the_python_rules_and_the_pip_hub_build_loads():
    calls = _module_calls()
    assert any(kw.get("name") == "rules_python" and kw.get("version") for kw, _ in calls["bazel_dep"])
    extensions = {args[0]: args[1] for _, args in calls["use_extension"]}
    assert extensions == {"@rules_python//python/extensions:python.bzl": "python",
                          "@rules_python//python/extensions:pip.bzl": "pip"}
    (toolchain, _), = calls["python.toolchain"]
    (hub, _), = calls["pip.parse"]
    assert hub["requirements_lock"] == "//:requirements_lock.txt"
    assert hub["python_version"] == toolchain["python_version"]
    assert ["pip", hub["hub_name"]] in [args for _, args in calls["use_repo"]]

    build = (ROOT / "BUILD").read_text()
    loads = {node.args[0].value for node in _calls(ROOT / "BUILD")
             if isinstance(node.func, ast.Name) and node.func.id == "load"}
    assert loads == {"@rules_python//python:defs.bzl", f"@{hub['hub_name']}//:requirements.bzl"}, loads
    used_rules = set(re.findall(r"^(py_\w+)\(", build, re.M))
    assert used_rules <= set(re.search(r'load\("@rules_python//python:defs.bzl", ([^)]*)\)', build)[1]
                              .replace('"', "").replace(" ", "").split(",")), used_rules


def _lock():
    pins = {}
    for line in (ROOT / "requirements_lock.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version and canonicalize_name(name) == name, f"requirements_lock.txt: not name==version: {line!r}"
            pins[name] = version
    return pins


def _lock_script():
    spec = importlib.util.spec_from_file_location("lock_requirements", ROOT / "scripts" / "lock_requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lock_pins_what_setup_py_accepts():
    pins = _lock()
    wrong = []
    for requirement in _lock_script().setup_requirements():
        name = canonicalize_name(requirement.name)
        if name not in pins:
            wrong.append(f"{requirement} is in setup.py but not in requirements_lock.txt")
        elif pins[name] not in requirement.specifier:
            wrong.append(f"requirements_lock.txt pins {name}=={pins[name]}, outside setup.py's {requirement}")
    assert not wrong, "\n".join(wrong) + "\n(re-run scripts/lock_requirements.py)"


def test_lock_names_every_package_the_environment_needs():
    """The lock holds setup.py's requirements and everything they depend on here: a dependency added to setup.py
    without re-running scripts/lock_requirements.py fails. Versions are compared by name only, since a fresh
    install (CI's) may resolve newer patch releases than the environment the lock was made in."""
    script = _lock_script()
    missing = sorted(set(script.closure(script.setup_requirements())) - set(_lock()))
    assert not missing, f"requirements_lock.txt lacks {missing}: re-run scripts/lock_requirements.py"


def test_every_build_requirement_is_locked():
    named = {canonicalize_name(n) for n in re.findall(r'requirement\("([^"]+)"\)', (ROOT / "BUILD").read_text())}
    missing = sorted(named - set(_lock()))
    assert not missing, f"BUILD uses requirement() of packages missing from requirements_lock.txt: {missing}"
