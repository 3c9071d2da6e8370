"""One exception type for user-facing problems: the CLI prints it as a single line and exits 2."""


class LtrayError(ValueError):
    """Bad input or a broken file: the message names the problem in one line."""
