"""Errors a user can act on: each message names the file, line or config key at fault."""


class UserInputError(Exception):
    """Bad input from the user: printed as a one-line message, not a traceback."""


class ConfigError(UserInputError):
    """A config value outside what the schema allows."""


class DataError(UserInputError):
    """A data file or record that cannot be used."""
