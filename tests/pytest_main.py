"""The `main` of every py_test target in BUILD: runs pytest on the test files named in the target's `args` and
exits with pytest's status, so a failing test, a collection error or a file with no tests fails the target.

    python tests/pytest_main.py tests/test_agc.py [pytest options]
"""
import sys

import pytest


def main(argv=None):
    args = sys.argv[1:] if argv is None else list(argv)
    if not any(a.endswith(".py") for a in args):
        print("usage: pytest_main.py TEST_FILE.py... [pytest options]", file=sys.stderr)
        return 2
    # Bazel's runfiles tree is read-only: no .pytest_cache there.
    return int(pytest.main(["-p", "no:cacheprovider", *args]))


if __name__ == "__main__":
    sys.exit(main())
