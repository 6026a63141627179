"""Command line: summarise and verify a corpus.

    python -m keras_nfnet.data.inspect_corpus /path/to/corpus            # summary + checksums + index check
    python -m keras_nfnet.data.inspect_corpus /path/to/corpus --deep     # also parse and decode every record

Exit status 0 when the corpus verifies, 1 when problems were found (each is printed), 2 for usage errors.
"""
import argparse
import sys

from keras_nfnet.data import verify


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus_dir")
    parser.add_argument("--deep", action="store_true", help="parse every record, check labels, decode images")
    parser.add_argument("--top", type=int, default=10, help="classes shown in the label histogram head")
    parser.add_argument("--no_verify", action="store_true", help="only print the summary")
    args = parser.parse_args(argv)
    try:
        print(verify.summarize(args.corpus_dir, top=args.top))
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.no_verify:
        return 0
    problems = verify.verify(args.corpus_dir, deep=args.deep, progress=lambda m: print(m, file=sys.stderr))
    for p in problems:
        print(f"PROBLEM: {p}")
    print("verified: OK" if not problems else f"verification FAILED: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
