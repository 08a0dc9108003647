"""Exceptions a caller can catch. The CLI turns every DiffexError into one line, exit 1."""


class DiffexError(Exception):
    """A user-facing error: bad input, unknown spec, incompatible database."""


class UsageError(DiffexError):
    """Bad arguments (the CLI exits 2 for these)."""
