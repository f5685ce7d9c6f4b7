"""``python -m jointreg``: the ``jointreg`` command (also what ``torchrun -m jointreg train`` runs)."""

import sys

from jointreg.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
