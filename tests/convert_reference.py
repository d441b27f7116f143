#!/usr/bin/env python3
"""Convert Tracr's reference models to .llcw files for the test suites.

Usage: python3 tests/convert_reference.py REFERENCE_DIR OUT_DIR

REFERENCE_DIR/models/NAME.npz becomes OUT_DIR/NAME.llcw and
REFERENCE_DIR/variant_BOS_PAD/models/NAME.npz becomes OUT_DIR/BOS_NAME.llcw.
"""

import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tracr_weights"))

import convert  # noqa: E402  (needs the path set above)


def main():
    reference, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    for folder, prefix in (("models", ""), (os.path.join("variant_BOS_PAD", "models"), "BOS_")):
        for npz in sorted(glob.glob(os.path.join(reference, folder, "*.npz"))):
            name = os.path.basename(npz)[:-4]
            convert.convert(npz, npz[:-4] + ".json", os.path.join(out, prefix + name + ".llcw"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
