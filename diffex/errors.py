"""Exceptions a caller can catch. The CLI turns every DiffexError into one line, exit 1."""


class DiffexError(Exception):
    """A user-facing error: bad input, unknown spec, incompatible database."""


class UsageError(DiffexError):
    """Bad arguments (the CLI exits 2 for these)."""


class DiffexWarning(UserWarning):
    """Input diffex accepts but a person should look at (skipped files, an implausible taxonomy).
    Emitted with `warnings.warn` before any work; the CLI prints each as one `Warning:` line."""


class OptionError(UsageError):
    """A bad value of a named option, said in library terms (`samples must be at least 1`).
    `message(name)` renders it with each option spelled another way: the CLI passes its flag
    names (`--samples must be at least 1`)."""

    def __init__(self, option: str, text: str, *others: str):
        self.option, self.text, self.others = option, text, others
        super().__init__(self.message())

    def message(self, name=lambda option: option) -> str:
        return f"{name(self.option)} {self.text.format(*(name(o) for o in self.others))}"
