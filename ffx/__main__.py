"""`python -m ffx`: the same as the `ffx` command."""

from ffx.cli import main

main()
