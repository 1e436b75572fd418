"""One module per `ffx` command; each exposes `command`, a thin Click shell over a library call."""
