"""Measurement (a) of REVIVAL: query strategies on the fixed features of one trained model, linear-probe task model.

    python scripts/active_features.py --run RUN_DIR --data DIR --out DIR [--pool 10000] [--seeds 0 1 2 3 4] ...

See camssl.active.probe (and --help) for what it does and writes.
"""

import sys

from camssl.active.probe import main

if __name__ == "__main__":
    sys.exit(main())
