"""One way to connect to an environment's Redis online store, for the writer, the reader and verify."""

from __future__ import annotations

from typing import Any

from feature_platform.environments import EnvironmentContract, RedisConfig, Settings
from feature_platform.errors import ConfigError

SOCKET_TIMEOUT_SECONDS = 5.0


def connect(settings: Settings, env: EnvironmentContract, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Any:
    """A redis-py client for the environment's online store (binary replies, no decoding)."""
    import redis

    online = env.online_store
    if not isinstance(online, RedisConfig):
        raise ConfigError(f"environment {env.name} has no Redis online store")
    address = settings.require(online.address_env, "the Redis address host:port of the online store")
    password = settings.require(online.password_env, "the Redis password") if online.password_env else None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"{online.address_env}={address!r} is not host:port")
    return redis.Redis(host=host, port=int(port), db=online.db, password=password,
                       socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout)


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when the store is down, unreachable, read-only or refuses our password."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.AuthenticationError,
            redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError, ConnectionError, OSError)
