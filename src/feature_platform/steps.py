"""The orchestrated steps' names, in DAG order: the one definition the CLI, the environment contracts (per-step
policies) and the pipeline (run_named_step) share. Light to import: the CLI builds its commands from it."""

from __future__ import annotations

from typing import Literal, get_args

StepName = Literal["validate_contract", "build", "quality_gate", "write_version", "promote_latest", "feast_apply",
                   "materialize", "verify_online", "monitor", "compact_pushes"]
STEP_NAMES: tuple[str, ...] = get_args(StepName)
