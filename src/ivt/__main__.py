"""``python -m ivt`` (and ``torchrun -m ivt train ...``): the same as the ``ivt`` command."""
import sys

from ivt.cli import main

if __name__ == "__main__":
    sys.exit(main())
