"""Exception types. Everything a user can cause derives from :class:`RobustMoEError`; the CLI turns
those into one line on stderr and exit code 2. Anything else is a bug and is reported as such."""
from __future__ import annotations


class RobustMoEError(Exception):
    """Base class of errors caused by input (files, flags, data); shown as one line."""


class ConfigError(RobustMoEError):
    """A configuration value is invalid (unknown key, out-of-range value, wrong unit)."""


class DataError(RobustMoEError):
    """A data set is missing, incomplete or malformed."""


class CheckpointError(RobustMoEError):
    """A checkpoint is missing, truncated, foreign or unsafe."""


class ModelError(RobustMoEError):
    """A model cannot be built or does not fit the request (e.g. not an MoE model)."""


class RobustMoEWarning(UserWarning):
    """Base class of the package's warnings (the CLI prints them as one ``warning:`` line)."""


class RoutingCollapseWarning(RobustMoEWarning):
    """A routed model sends (almost) every input to one expert in some MoE layer."""


def require_positive_int(value: object, what: str, *, optional: bool = False) -> None:
    """Raise :class:`ConfigError` ("WHAT must be a positive integer, got ...") unless ``value`` is an
    ``int`` >= 1 (``bool`` is not accepted); with ``optional``, ``None`` passes too."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive integer, got {value!r}")
