"""Small helpers shared by tests that drive the platform through its library API."""

from __future__ import annotations

import os
import random
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from feature_platform import pipeline
from feature_platform.environments import Settings
from feature_platform.sample_data import SampleSpec
from feature_platform.store import ObjectStore

AS_OF = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
SMALL = SampleSpec(seed=7, scale=0.1, as_of=AS_OF)


def seed_raw(settings: Settings, spec: SampleSpec = SMALL) -> dict[str, int]:
    return pipeline.generate_sample_data(settings, spec)


def raw_store(settings: Settings) -> ObjectStore:
    env = settings.environment()
    return pipeline.raw_store(settings, env)


def data_store(settings: Settings) -> ObjectStore:
    env = settings.environment()
    return pipeline.object_store(settings, env)


def read_raw(settings: Settings, table: str) -> pa.Table:
    raw = raw_store(settings)
    return pq.read_table(raw.path(table), filesystem=raw.fs)


def replace_raw(settings: Settings, table: str, data: pa.Table) -> None:
    """Overwrite a raw table with ``data`` (one Parquet file), as an upstream system would."""
    raw = raw_store(settings)
    raw.delete(table)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "part-00000.parquet"
        pq.write_table(data, local)
        raw.upload(local, f"{table}/part-00000.parquet")


def configmap_mount(contracts: Path, mount: Path, stamp: str = "..2026_11_23_07_00_00.000000001") -> Path:
    """Lay out ``contracts`` exactly as the kubelet mounts a ConfigMap: keys are paths with "/" -> ".",
    stored in a hidden timestamped directory, reached through ``..data`` and one visible symlink per key."""
    data_dir = mount / stamp
    data_dir.mkdir(parents=True)
    for path in [*sorted(contracts.rglob("*.yaml")), contracts / "contracts.lock"]:
        if path.exists():
            key = path.relative_to(contracts).as_posix().replace("/", ".")
            (data_dir / key).write_bytes(path.read_bytes())
    link = mount / "..data"
    if link.is_symlink():
        link.unlink()
    os.symlink(stamp, link)
    for key in os.listdir(data_dir):
        if not (mount / key).is_symlink():
            os.symlink(f"..data/{key}", mount / key)
    return mount


# ------------------------------------------------------------------------------ generated contracts and data


EVERY_DTYPE_SQL = """SELECT merchant_code, ts, score, cnt, small, flag, label, seen_at, ratio FROM source"""


def every_dtype_contract(version: int = 1, name: str = "merchant_risk", key: str = "merchant_code",
                         key_dtype: str = "string", ttl: str = "2d", sql: str = EVERY_DTYPE_SQL) -> dict:
    """A contract unlike the examples: string (or int) keys, every dtype, nullable features."""
    features = [("score", "float64"), ("cnt", "int64"), ("small", "int32"), ("flag", "bool"), ("label", "string"),
                ("seen_at", "timestamp"), ("ratio", "float32")]
    return {"kind": "FeatureSet", "name": name, "version": version, "description": "Generated for tests.",
            "owner": "tests@example.com",
            "entity": {"name": "merchant", "join_key": key, "dtype": key_dtype, "description": "a merchant"},
            "timestamp_field": "ts", "ttl": ttl, "online": True, "pii": False,
            "source": {"table": "merchant_events", "sql": sql.replace("merchant_code", key)},
            "features": [{"name": n, "dtype": d, "description": f"{n} ({d})", "nullable": True}
                         for n, d in features]}


def write_contract(contracts: Path, contract: dict) -> Path:
    path = contracts / "feature_sets" / contract["name"] / f"v{contract['version']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(contract, sort_keys=False))
    return path


def merchant_events(merchants: list, rows_per_merchant: int = 4, seed: int = 3, null_share: float = 0.2,
                    end: datetime = AS_OF, key: str = "merchant_code") -> pa.Table:
    """Raw events for ``merchants``: one row per merchant and hour, every dtype, ~20% nulls per feature."""
    rng = random.Random(seed)
    rows: dict[str, list] = {k: [] for k in (key, "ts", "score", "cnt", "small", "flag", "label", "seen_at",
                                             "ratio")}

    def maybe(value):
        return None if rng.random() < null_share else value

    for merchant in merchants:
        for i in range(rows_per_merchant):
            stamp = end - timedelta(hours=i + 1, minutes=rng.randrange(60))
            rows[key].append(merchant)
            rows["ts"].append(stamp)
            rows["score"].append(maybe(rng.uniform(-1e6, 1e6)))
            rows["cnt"].append(maybe(rng.randrange(-2**40, 2**40)))
            rows["small"].append(maybe(rng.randrange(-2**31, 2**31)))
            rows["flag"].append(maybe(rng.random() < 0.5))
            rows["label"].append(maybe(rng.choice(["", "a", "ünïcödé", "x" * 300])))
            offset = timedelta(seconds=rng.randrange(10**6), microseconds=rng.randrange(10**6))
            rows["seen_at"].append(maybe(stamp - offset))
            rows["ratio"].append(maybe(rng.random()))
    key_type = pa.string() if isinstance(merchants[0], str) else pa.int64()
    return pa.table({key: pa.array(rows[key], key_type), "ts": pa.array(rows["ts"], pa.timestamp("us", tz="UTC")),
                     "score": pa.array(rows["score"], pa.float64()), "cnt": pa.array(rows["cnt"], pa.int64()),
                     "small": pa.array(rows["small"], pa.int32()), "flag": pa.array(rows["flag"], pa.bool_()),
                     "label": pa.array(rows["label"], pa.string()),
                     "seen_at": pa.array(rows["seen_at"], pa.timestamp("us", tz="UTC")),
                     "ratio": pa.array(rows["ratio"], pa.float32())})
