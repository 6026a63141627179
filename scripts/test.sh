#!/usr/bin/env bash
# Runs the test suite, creating/reusing the virtual environment first. Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m pytest "$@"
