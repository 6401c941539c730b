"""Errors a user can cause.

Anything derived from :class:`UserError` is reported by the command line as one line
(``error: <message>``) with a non-zero exit and no traceback (unless ``--debug``).
Messages name the problem and how to fix it.

:class:`UserError` is a :class:`ValueError` (a bad value given to the library), so code
that uses camssl as a library can catch either.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input (paths, config values, data), not a bug."""


class ConfigError(UserError):
    """An unknown config key or an invalid value."""


class DataError(UserError):
    """Missing, empty, corrupt or too-small data."""
