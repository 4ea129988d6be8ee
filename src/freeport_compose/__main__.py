"""`python -m freeport_compose` runs the CLI."""

from ._cli import console_main

console_main()
