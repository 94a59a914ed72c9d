"""Errors a user can fix. The command line prints them as one message and exits with code 2."""


class UserError(Exception):
    """A problem with the input or the configuration, not a bug: no traceback is shown."""


class ConfigError(UserError):
    """A configuration key has a bad value; the message names the key and the value."""


class DataError(UserError):
    """The dataset is missing or laid out wrongly; the message names the path and the fix."""


class InterruptedByUser(UserError):
    """Ctrl-C during a long job: what was finished is kept; the message says how to resume."""


def exit_code(error: UserError) -> int:
    """130 for an interruption (as a shell reports Ctrl-C), 2 for any other user error."""
    return 130 if isinstance(error, InterruptedByUser) else 2
