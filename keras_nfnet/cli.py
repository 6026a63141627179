"""What the command-line apps share: a user error (bad flag value, missing file, bad corpus) ends the process
with one `error: ...` line and exit status 2 instead of a traceback. Set KERAS_NFNET_TRACEBACK=1 to see the
traceback anyway."""
import os
import sys

from absl import app

USER_ERRORS = (ValueError, FileNotFoundError)


def run(main):
    """`absl.app.run(main)`, with user errors reported as one line; main's return value is the exit status."""

    def guarded(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            if os.environ.get("KERAS_NFNET_TRACEBACK"):
                raise
            print(f"error: {error}", file=sys.stderr)
            return 2

    app.run(lambda argv: sys.exit(guarded(argv)))
