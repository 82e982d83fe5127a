"""Every error the platform raises on purpose.

Each class takes the facts and builds a one-line message that says what is wrong and what to do.
The CLI prints ``str(error)`` and exits with ``error.exit_code``; anything else is a bug and shows a traceback.
"""

from __future__ import annotations


class PlatformError(Exception):
    """Base class: a failure with an actionable, one-line message."""

    exit_code = 1


class ContractError(PlatformError):
    """A contract file is malformed: names the file, the field path and the fix."""

    exit_code = 2

    def __init__(self, file: str, field: str, problem: str) -> None:
        self.file = file
        self.field = field
        self.problem = problem
        where = f"{file}: {field}" if field else file
        super().__init__(f"{where}: {problem}")


class ContractErrors(PlatformError):
    """Several contract errors, reported together so one run shows every problem."""

    exit_code = 2

    def __init__(self, errors: list[ContractError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


class CompatibilityError(PlatformError):
    """A released contract version changed in place, or a new version breaks readers."""

    exit_code = 3


class ConfigError(PlatformError):
    """The runtime configuration (environment variables, settings) is missing or wrong."""

    exit_code = 2


class StoreError(PlatformError):
    """The object store cannot be read or written, or holds something unexpected."""


class BuildError(PlatformError):
    """A build could not produce its data (source missing, transform failed)."""


class QualityGateError(BuildError):
    """Built rows break the contract: which column, which rule, how many rows."""

    def __init__(self, feature_set: str, failures: list[str]) -> None:
        self.failures = failures
        super().__init__(
            f"{feature_set}: data quality gate failed, nothing promoted: " + "; ".join(failures)
        )


class PointerMissingError(StoreError):
    """No ``latest`` pointer exists yet for a feature set."""

    def __init__(self, feature_sets: list[str], location: str) -> None:
        names = ", ".join(feature_sets)
        first = feature_sets[0].replace(" v", " --version ")
        super().__init__(f"{names}: no latest pointer at {location}; build first, e.g. `featurectl build {first}`")


class FeastError(PlatformError):
    """Apply, materialize or an online read failed."""


class OnlineStoreUnavailable(FeastError):
    """The online store (Redis) cannot be reached."""


class RegistryMismatchError(FeastError):
    """The Feast registry holds definitions from other contracts than the ones in use."""


class LockTimeout(PlatformError):
    """Another writer holds the registry lock for too long."""
