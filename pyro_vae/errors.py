"""UserError: an error in what the user asked for, shown as one line by the CLI (exit code 2)."""


class UserError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it, in one line."""
