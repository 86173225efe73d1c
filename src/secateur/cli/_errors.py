"""The CLI's one error type: printed as one line, exit status 2."""


class UsageError(ValueError):
    """Bad input from the command line or a recipe: a missing file, an unknown key, a bad value."""
