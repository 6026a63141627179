"""What the command-line apps share: a user error (bad flag value, missing file, bad corpus) ends the process
with one `error: ...` line and exit status 2 instead of a traceback. Set KERAS_NFNET_TRACEBACK=1 to see the
traceback anyway. TensorFlow's own Python INFO lines (SavedModel signature renaming, checkpoint sharding, ...) are
hidden too; KERAS_NFNET_VERBOSE=1 shows them (see also `keras_nfnet/__init__.py` for its C++ lines)."""
import logging
import os
import sys

from absl import app
from absl import logging as absl_logging

USER_ERRORS = (ValueError, FileNotFoundError)


def run(main):
    """`absl.app.run(main)`, with user errors reported as one line; main's return value is the exit status."""

    def guarded(argv):
        if not os.environ.get("KERAS_NFNET_VERBOSE"):
            # TensorFlow logs through absl and through its own logger. The verbosity, not the absl logger's level:
            # TensorFlow sets the verbosity to FATAL and back while saving. The apps' own messages stay.
            absl_logging.set_verbosity(absl_logging.WARNING)
            logging.getLogger("tensorflow").setLevel(logging.WARNING)
            logging.getLogger("keras_nfnet").setLevel(logging.INFO)
        try:
            return main(argv)
        except USER_ERRORS as error:
            if os.environ.get("KERAS_NFNET_TRACEBACK"):
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2

    app.run(lambda argv: sys.exit(guarded(argv)))
