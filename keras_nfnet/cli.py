"""What the command-line apps share: a user error (bad or missing flag, stray argument, bad flag value, missing
file, bad corpus, bad record, no intact checkpoint, a bucket or disk that refuses a read or write) ends the process with one `error: ...` line and exit status 2
instead of a traceback or absl's usage text. Set KERAS_NFNET_TRACEBACK=1 to see the traceback anyway.
TensorFlow's own Python INFO lines (SavedModel signature renaming, checkpoint sharding, ...) are hidden too;
KERAS_NFNET_VERBOSE=1 shows them (see also `keras_nfnet/__init__.py` for its C++ lines)."""
import logging
import os
import sys

from absl import app, flags
from absl import logging as absl_logging



def _storage_errors():
    """A bucket's refusals: OSError (403 and most I/O problems, also local ones such as a full disk) and gcsfs's
    HttpError (401 and other HTTP statuses), which is not an OSError."""
    try:
        from gcsfs.retry import HttpError
    except ImportError:  # gcsfs is a dependency; tolerate an environment without it
        return (OSError,)
    return (OSError, HttpError)


USER_ERRORS = (ValueError, app.UsageError) + _storage_errors()  # FileNotFoundError is an OSError


def one_line(error):
    """The error's message on one line: a multi-line message (a list of problems) is joined with '; '."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    rest = [line[2:] if line.startswith("- ") else line for line in lines[1:]]
    return lines[0] + (" " + "; ".join(rest) if rest else "")


def report(error, status):
    """Print `error` as one line to stderr and return `status` (for the apps' own exit codes)."""
    print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
    return status


class _PlainFormatter(logging.Formatter):
    """The message alone for INFO, prefixed with its level name above that."""

    def format(self, record):
        message = record.getMessage()
        return message if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {message}"


def _parse_flags(argv):
    """absl's flag parsing, with its errors (a missing required flag, an unknown flag, a bad value) reported as one
    line and exit status 2 (absl's default prints the usage text and exits 1)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        sys.exit(report(f"{error} (--helpfull lists the flags)", 2))


def run(main, positional=False, flags_parser=None):
    """`absl.app.run(main)`, with user errors reported as one line and exit status 2; main's return value is the
    exit status. Positional arguments are an error unless `positional`. `flags_parser` replaces the flag parsing
    (it must report its errors the same way)."""

    def guarded(argv):
        if not os.environ.get("KERAS_NFNET_VERBOSE"):
            # TensorFlow logs through absl and through its own logger. The verbosity, not the absl logger's level:
            # TensorFlow sets the verbosity to FATAL and back while saving. The apps' own messages stay.
            absl_logging.set_verbosity(absl_logging.WARNING)
            logging.getLogger("tensorflow").setLevel(logging.WARNING)
            logging.getLogger("keras_nfnet").setLevel(logging.INFO)
            # The apps' progress reads as plain lines; absl's "I1129 18:26:49.949 1398... file.py:104]" prefix
            # (and the level letter of warnings) comes back with KERAS_NFNET_VERBOSE=1.
            absl_logging.get_absl_handler().setFormatter(_PlainFormatter())
        try:
            if not positional and len(argv) > 1:
                raise app.UsageError(f"unexpected arguments {argv[1:]}: every option is a --flag (--helpfull "
                                     "lists them)")
            return main(argv)
        except USER_ERRORS as error:
            if os.environ.get("KERAS_NFNET_TRACEBACK"):
                raise
            status = report(error, 2)
            # An error raised inside a tf.data function can leave TensorFlow's input threads waiting, and the
            # interpreter's exit then waits on them forever: after a user error nothing is left to finish.
            sys.stdout.flush()
            os._exit(status)

    app.run(lambda argv: sys.exit(guarded(argv)), flags_parser=flags_parser or _parse_flags)
