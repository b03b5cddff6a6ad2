"""The one exception type users see. Its message is a single line naming the problem and the fix."""


class EdgefaceError(Exception):
    """A user-facing error: bad input, a missing backend, a corrupt artifact.

    The CLI prints ``error: <message>`` and exits non-zero, without a traceback.
    """


class MissingBackendError(EdgefaceError):
    """A backend's package is not installed; the message names the extra that installs it."""
