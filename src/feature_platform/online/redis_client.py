"""One way to connect to an environment's Redis online store, for the writer, the reader and verify."""

from __future__ import annotations

import os
import threading
from typing import Any

from feature_platform.environments import EnvironmentContract, RedisConfig, Settings
from feature_platform.errors import ConfigError

SOCKET_TIMEOUT_SECONDS = 5.0

# One client (and connection pool) per store and process: a catalogue's views share it, so materializing or
# verifying fifty views opens one pool (a cluster client also discovers the slots once), not fifty.
_clients: dict[tuple[Any, ...], Any] = {}
_clients_lock = threading.Lock()


def connect(settings: Settings, env: EnvironmentContract, socket_timeout: float = SOCKET_TIMEOUT_SECONDS) -> Any:
    """A redis-py client for the environment's online store (binary replies, no decoding), shared in-process."""
    online = env.online_store
    if not isinstance(online, RedisConfig):
        raise ConfigError(f"environment {env.name} has no Redis online store")
    address = settings.require(online.address_env, "the Redis address host:port of the online store")
    password = settings.require(online.password_env, "the Redis password") if online.password_env else None
    key = (address, online.db, password, online.cluster, socket_timeout, os.getpid())
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = _new_client(settings, env, socket_timeout)
        return client


def _new_client(settings: Settings, env: EnvironmentContract, socket_timeout: float) -> Any:
    import redis

    online = env.online_store
    assert isinstance(online, RedisConfig)  # connect() checked
    address = settings.require(online.address_env, "the Redis address host:port of the online store")
    password = settings.require(online.password_env, "the Redis password") if online.password_env else None
    nodes: list[tuple[str, int]] = []
    for entry in address.split(","):
        host, _, port_text = entry.strip().rpartition(":")
        if not host or not port_text.isdigit():
            raise ConfigError(f"{online.address_env}={address!r}: {entry!r} is not host:port")
        nodes.append((host, int(port_text)))
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # One immediate retry: a stopped Redis must surface as an error within the socket timeout, not after
    # redis-py's default backoff (3 retries, up to ~7 s, which also stalled the server's event loop);
    # callers retry at their own level (the DAG's task retries, the server's next request).
    retry = Retry(NoBackoff(), 1)
    if online.cluster:
        from redis.cluster import ClusterNode, RedisCluster

        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in nodes], password=password,
                            socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, retry=retry)
    if len(nodes) != 1:
        raise ConfigError(f"{online.address_env} names {len(nodes)} nodes; a single Redis takes one host:port "
                          "(set cluster: true in the environment contract for a Redis Cluster)")
    (host, port), = nodes
    return redis.Redis(host=host, port=port, db=online.db, password=password,
                       socket_timeout=socket_timeout, socket_connect_timeout=socket_timeout, retry=retry)


def is_cluster(client: Any) -> bool:
    """A RedisCluster client routes each key to its node; the single-node fast path packs one buffer."""
    return not hasattr(client, "connection_pool")


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """What redis-py raises when the store is down, unreachable, read-only or refuses our password."""
    import redis

    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, redis.exceptions.AuthenticationError,
            redis.exceptions.ReadOnlyError, redis.exceptions.BusyLoadingError, redis.exceptions.RedisClusterException,
            redis.exceptions.ClusterError, ConnectionError, OSError)
