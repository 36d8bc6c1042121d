"""Errors a user can act on: each message names the file, line or config key at fault."""


class UserInputError(Exception):
    """Bad input from the user: printed as a one-line message, not a traceback."""


class ConfigError(UserInputError):
    """A config value outside what the schema allows."""


class DataError(UserInputError):
    """A data file or record that cannot be used."""


class DivergenceError(UserInputError):
    """The loss diverged while training (trainer.stop_on_divergence, or a NaN/infinite loss): a
    learning rate too high for the model. The trial ends FAILED; what it logged stays recorded."""
