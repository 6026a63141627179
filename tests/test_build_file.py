"""BUILD must really cover the sources: every .py file of the library, the trainers and the producers belongs to a
target, every listed file exists, and every test file has a py_test. Parsed with `ast` (BUILD is Starlark, whose
call syntax Python can read), so no Bazel is needed here."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
COVERED_DIRS = ("keras_nfnet", "trainers", "datasets")


def _targets():
    tree = ast.parse((ROOT / "BUILD").read_text(), filename="BUILD")
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id.startswith("py_"):
            kwargs = {k.arg: k.value for k in node.keywords}
            srcs = [elt.value for elt in kwargs["srcs"].elts] if "srcs" in kwargs else []
            targets.append((node.func.id, kwargs["name"].value, srcs))
    return targets


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
