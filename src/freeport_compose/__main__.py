"""`python -m freeport_compose` runs the CLI."""

import sys

from ._cli import main

sys.exit(main())
