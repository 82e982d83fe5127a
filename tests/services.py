"""Real services for tests: a redis-server process and moto's S3 server over HTTP, each on a free port.

Nothing here is mocked: the platform reaches them through redis-py, boto3, s3fs and pyarrow as it would reach
production. Readiness is polled with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REDIS_PASSWORD = "test-only-password"  # a throwaway test server's password, not a secret
BUCKETS = ("feature-platform-dev", "feature-platform-prod")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # not up yet
            last = exc
        time.sleep(0.05)  # readiness poll with a deadline
    raise RuntimeError(f"{what} did not become ready in {timeout}s: {last}")


@dataclass
class RedisServer:
    port: int
    password: str
    process: subprocess.Popen

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def client(self, db: int = 0):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, db=db)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_redis(password: str = REDIS_PASSWORD) -> RedisServer:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed: run `scripts/dev setup` (or apt-get install -y redis-server)")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--requirepass", password, "--protected-mode", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = RedisServer(port, password, process)
    wait_until(lambda: server.client().ping(), f"redis-server on port {port}")
    return server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.fixture
def redis_clean(redis_server: RedisServer) -> RedisServer:
    redis_server.client().flushall()
    return redis_server


@dataclass
class S3Server:
    endpoint: str

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint)

    def reset(self) -> None:
        client = self.client()
        for bucket in client.list_buckets().get("Buckets", []):
            objects = client.list_objects_v2(Bucket=bucket["Name"]).get("Contents", [])
            for obj in objects:
                client.delete_object(Bucket=bucket["Name"], Key=obj["Key"])
        for name in BUCKETS:
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=name)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto's S3 API over real HTTP on a free port. Dummy credentials for the whole test session."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one log line per request otherwise
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        os.environ[key] = value
    os.environ.pop("AWS_PROFILE", None)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}")
    wait_until(lambda: s3.client().list_buckets() is not None, "moto S3 server")
    yield s3
    server.stop()


@pytest.fixture
def s3_clean(s3_server: S3Server) -> S3Server:
    s3_server.reset()
    return s3_server


def service_environ(redis: RedisServer | None, s3: S3Server | None) -> dict[str, str]:
    """The variables a deployment would set: Redis address and password, S3 endpoint and credentials."""
    environ = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    if redis is not None:
        environ["FEATURE_PLATFORM_REDIS_ADDRESS"] = redis.address
        environ["FEATURE_PLATFORM_REDIS_PASSWORD"] = redis.password
    if s3 is not None:
        environ["FEAST_S3_ENDPOINT_URL"] = s3.endpoint
    return environ


@pytest.fixture
def dev_settings(tmp_path: Path, contracts_copy: Path, redis_clean: RedisServer, s3_clean: S3Server):
    """Settings for the real `dev` environment contract against redis-server and moto's S3 server."""
    from feature_platform.environments import Settings

    return Settings.from_env(environ=service_environ(redis_clean, s3_clean), contracts_dir=contracts_copy,
                             home=tmp_path / "home", env_name="dev")


@dataclass
class PostgresServer:
    port: int
    process: subprocess.Popen
    command: list[str]

    def url(self, database: str = "feast") -> str:
        return f"postgresql+psycopg://feast:feast@127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def kill(self) -> None:
        """SIGKILL the postmaster itself (a crash, not a shutdown: runuser is only its parent); `start` brings it
        back on the same data, through crash recovery."""
        import signal

        data = Path(self.command[self.command.index("-D") + 1])
        os.kill(int((data / "postmaster.pid").read_text().split()[0]), signal.SIGKILL)
        self.process.wait(timeout=30)

    def start(self) -> None:
        """Start on the same data and port; retried until a deadline (a killed server's backends may hold its
        shared memory for a moment)."""
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user=feast password=feast dbname=postgres"

        def up() -> bool:
            if self.process.poll() is not None:
                self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            psycopg.connect(dsn, connect_timeout=2).close()
            return True

        wait_until(up, "postgres after a restart", timeout=120)


def _postgres_bin(name: str) -> str:
    found = shutil.which(name) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))), None)
    if found is None:
        pytest.fail("PostgreSQL server binaries are missing: run `scripts/dev setup` "
                    "(or apt-get install -y postgresql)")
    return str(found)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL on a free port, for the SQL registry. initdb refuses root, so run as `postgres` then
    (in a directory of its own: pytest's temporary directories are private to root)."""
    import psycopg

    root = Path(tempfile.mkdtemp(prefix="feature-platform-pg-"))
    data = root / "data"
    data.mkdir()
    pwfile = root / "pwfile"
    pwfile.write_text("feast\n")
    as_user: list[str] = []
    if os.geteuid() == 0:
        for path in (root, data, pwfile):
            shutil.chown(path, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run([*as_user, _postgres_bin("initdb"), "-D", str(data), "-U", "feast", "--pwfile", str(pwfile),
                    "-A", "scram-sha-256"], check=True, capture_output=True, timeout=120)
    port = free_port()
    command = [*as_user, _postgres_bin("postgres"), "-D", str(data), "-p", str(port),
               "-c", "listen_addresses=127.0.0.1", "-k", str(data), "-c", "fsync=off"]
    server = PostgresServer(port, subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                            command)
    try:
        dsn = f"host=127.0.0.1 port={port} user=feast password=feast dbname=postgres"
        wait_until(lambda: psycopg.connect(dsn, connect_timeout=2).close() is None, "postgres", timeout=60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE feast")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    with running_postgres() as server:
        yield server


@dataclass
class RedisCluster:
    """A real Redis Cluster: three masters (no replicas) on free ports, password-protected."""

    ports: list[int]
    password: str
    root: Path
    processes: dict[int, subprocess.Popen]

    @property
    def address(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start_node(self, port: int) -> None:
        """Start (or restart, rejoining with its nodes.conf) the node on ``port``."""
        node_dir = self.root / str(port)
        node_dir.mkdir(exist_ok=True)
        self.processes[port] = subprocess.Popen(
            [shutil.which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--dir", str(node_dir), "--requirepass", self.password,
             "--masterauth", self.password, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        wait_until(lambda: redis.Redis(port=port, password=self.password).ping(), f"cluster node {port}")

    def stop_node(self, port: int) -> None:
        process = self.processes.get(port)
        if process is not None and process.poll() is None:
            process.terminate()
            process.wait(timeout=10)

    def healthy(self) -> bool:
        import redis

        return all(b"cluster_state:ok" in redis.Redis(port=port, password=self.password).execute_command(
            "CLUSTER", "INFO") for port in self.ports)

    def stop(self) -> None:
        for port in self.ports:
            self.stop_node(port)
        shutil.rmtree(self.root, ignore_errors=True)


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, fixed by Redis) is valid and free too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture
def redis_cluster() -> Iterator[RedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server/redis-cli are not installed: run `scripts/dev setup`")
    cluster = RedisCluster([cluster_port() for _ in range(3)], REDIS_PASSWORD,
                           Path(tempfile.mkdtemp(prefix="feature-platform-cluster-")), {})
    try:
        for port in cluster.ports:
            cluster.start_node(port)
        subprocess.run(["redis-cli", "-a", cluster.password, "--no-auth-warning", "--cluster", "create",
                        *[f"127.0.0.1:{port}" for port in cluster.ports], "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=60)
        wait_until(cluster.healthy, "Redis Cluster state ok", timeout=30)
        yield cluster
    finally:
        cluster.stop()
