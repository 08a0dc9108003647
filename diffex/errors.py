"""Exceptions a caller can catch. The CLI turns every DiffexError into one line, exit 1."""


class DiffexError(Exception):
    """A user-facing error: bad input, unknown spec, incompatible database."""


class UsageError(DiffexError):
    """Bad arguments (the CLI exits 2 for these)."""


class DiffexWarning(UserWarning):
    """Input diffex accepts but a person should look at (skipped files, an implausible taxonomy).
    Emitted with `warnings.warn` before any work; the CLI prints each as one `Warning:` line."""
