"""``python -m camssl`` (also what ``torchrun -m camssl`` runs)."""

import os
import sys

from camssl.cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
    # In a torchrun worker the run is over and its files are written and closed; gloo's
    # worker threads were seen to abort the interpreter's shutdown now and then
    # ("terminate called without an active exception", exit -6, after result.json was
    # written), which turns a finished run into a failed launch. Leave without the
    # shutdown destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
