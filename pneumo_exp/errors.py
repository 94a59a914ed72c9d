"""Errors a user can fix. The command line prints them as one message and exits with code 2."""


class UserError(Exception):
    """A problem with the input or the configuration, not a bug: no traceback is shown."""

    exit_code = 2


class ConfigError(UserError):
    """A configuration key has a bad value; the message names the key and the value."""


class DataError(UserError):
    """The dataset is missing or laid out wrongly; the message names the path and the fix."""


class InterruptedByUser(UserError):
    """Ctrl-C during a long job: what was finished is kept; the message says how to resume."""

    exit_code = 130  # as a shell reports Ctrl-C
