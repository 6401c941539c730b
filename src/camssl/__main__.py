"""``python -m camssl`` (also what ``torchrun -m camssl`` runs)."""

import sys

from camssl.cli import main

sys.exit(main())
