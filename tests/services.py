"""Real services for tests, each started on a free port and stopped afterwards."""

from __future__ import annotations
