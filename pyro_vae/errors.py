"""UserError: an error in what the user asked for, shown as one line by the CLI (exit code 2); DataWarning: data
that may not be what the user meant, one warning line."""


class UserError(ValueError):
    """Bad input from the user: the message says what is wrong and how to fix it, in one line."""


class DataWarning(UserWarning):
    """Data that load but may not be what the user meant (a transposed array, very few examples); the CLI shows
    it as one line, ``pyro-vae: warning: ...``."""
