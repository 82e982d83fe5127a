"""Every error the platform raises on purpose.

Each class takes the facts and builds a one-line message that says what is wrong and what to do.
The CLI prints ``str(error)`` and exits with ``error.exit_code``; anything else (a failing disk, S3, Redis, or a
bug) is described in one line by :func:`describe_failure`; ``--debug`` shows the traceback.
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


class MonitorBreach(PlatformError):
    """A monitored figure (freshness, volume, null rate, drift) crossed its threshold; names each one."""


class NotFound(ConfigError):
    """A named object (a push source) does not exist; the server answers 404."""


class AccessDenied(PlatformError):
    """The caller's team may not read a feature view (or see its PII unmasked)."""

    exit_code = 4

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.status = status  # HTTP: 401 without a valid identity, 403 with one that is not allowed


class AddressInUse(PlatformError):
    """The server's host:port is taken (another server, or a previous one still draining)."""

    exit_code = 5


# Exit codes of featurectl; the command reference in docs/ is generated from this table.
EXIT_CODES = {0: "success", 1: "a step failed (build, quality gate, verify, online store, Feast, a lease)",
              2: "bad input: a contract, an environment, an argument or a file",
              3: "an incompatible contract change: a released version edited in place",
              4: "access denied", 5: "the server's address is in use"}


def describe_failure(exc: BaseException) -> str:
    """One line for a failure the platform did not raise on purpose: which resource, and what to do."""
    import errno

    first = (str(exc).strip().splitlines() or [""])[0][:300]
    name = type(exc).__name__
    module = type(exc).__module__.split(".")[0]
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"disk full writing {exc.filename or 'a file'}: free space (or point TMPDIR elsewhere) and re-run"
    if isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (f"cannot write {exc.filename or 'a file'}: {exc.strerror}; the work directory and stores must be "
                "writable by this user (check the mount and permissions) and re-run")
    if module in ("botocore", "boto3", "s3fs", "aiobotocore") or "S3" in name:
        return f"object store failed ({name}: {first}); check the S3 endpoint, bucket and credentials, then re-run"
    if module == "redis" or "Redis" in name:
        if first.startswith("OOM") or "maxmemory" in first:
            return (f"Redis is out of memory ({first}); raise its maxmemory or memory limit (docs/scaling.md: "
                    "sizing), or retire views you no longer serve, then re-run (loads are idempotent)")
        if name == "AuthenticationError" or first.startswith(("WRONGPASS", "NOAUTH")):
            return (f"Redis refused the password ({name}: {first}); check FEATURE_PLATFORM_REDIS_PASSWORD (or the "
                    "variable the environment contract names) against the Secret, then re-run")
        if name in ("ConnectionError", "TimeoutError", "ClusterDownError"):
            return (f"online store unreachable ({name}: {first}); check Redis is up and the address variable, "
                    "then re-run (loads are idempotent)")
        return f"online store failed ({name}: {first}); fix the cause named here, then re-run (loads are idempotent)"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return f"connection failed ({name}: {first}); check the service is up and reachable, then re-run"
    if isinstance(exc, OSError):
        return f"{exc.strerror or name} ({exc.filename or first}); fix the file system problem and re-run"
    return f"unexpected {name}: {first}; re-run with --debug for the traceback and report it"
