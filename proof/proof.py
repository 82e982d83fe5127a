"""`python proof/proof.py --env dev --report out/proof` is `featurectl proof ...`; the checks live in the library."""

import sys

from feature_platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["proof", *sys.argv[1:]]))
