"""`python trainers/compare.py ...` from a checkout is `nfnet-compare ...` (keras_nfnet.jobs.compare, where the flags
are)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_nfnet.jobs.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
