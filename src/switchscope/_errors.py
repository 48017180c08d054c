"""Exceptions and warnings of switchscope.

Every error a user can cause is a :class:`SwitchscopeError`. Its message is one line that names
what is wrong (the parameter, the file, the value received) and what to do about it. The command
line turns these into exit code 2 and that one line on stderr.
"""

from __future__ import annotations


class SwitchscopeError(Exception):
    """Base class of every error a user can cause."""


class DataError(SwitchscopeError, ValueError):
    """Input data is missing, unreadable, of the wrong shape, or holds bad values."""


class FormatError(DataError):
    """A file is not in any format switchscope reads (or is corrupt)."""


class ConfigError(SwitchscopeError, ValueError):
    """An option is out of range or of the wrong type."""


class NotFittedError(SwitchscopeError, AttributeError):
    """An estimator was used before ``fit``."""


class OutputError(SwitchscopeError):
    """An output path exists or cannot be written."""


class ConvergenceWarning(UserWarning):
    """A fit or a training run did not converge everywhere."""


class DataWarning(UserWarning):
    """A soft problem with the data (repaired values, dropped pixels)."""
