"""Command line: summarise and verify a corpus.

    python -m keras_nfnet.data.inspect_corpus /path/to/corpus            # summary + checksums + index check
    python -m keras_nfnet.data.inspect_corpus /path/to/corpus --deep     # also parse and decode every record

Exit status 0 when the corpus verifies, 1 when problems were found (each is printed), 2 for usage errors.
"""
import sys

from absl import flags

from keras_nfnet.data import verify


def _flags():
    """The command's absl flags, in their own FlagValues: `main` may be called many times in one process."""
    fv = flags.FlagValues()
    flags.DEFINE_bool("deep", False, "parse every record, check labels, decode images", flag_values=fv)
    flags.DEFINE_integer("top", 10, "classes shown in the label histogram head", flag_values=fv)
    flags.DEFINE_bool("no_verify", False, "only print the summary", flag_values=fv)
    return fv


def main(argv=None):
    """`argv`: the arguments after the program name (default: sys.argv[1:]); returns the exit status."""
    args = _flags()
    try:
        rest = args(["inspect_corpus"] + list(sys.argv[1:] if argv is None else argv))[1:]
    except flags.Error as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if len(rest) != 1:
        print(f"error: give one corpus directory; got {rest or 'none'}", file=sys.stderr)
        return 2
    corpus_dir = rest[0]
    try:
        print(verify.summarize(corpus_dir, top=args.top))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.no_verify:
        return 0
    problems = verify.verify(corpus_dir, deep=args.deep, progress=lambda m: print(m, file=sys.stderr))
    for p in problems:
        print(f"PROBLEM: {p}")
    print("verified: OK" if not problems else f"verification FAILED: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
