#!/usr/bin/env bash
# The whole loop on the `local` environment (no services), ending with the proof. Same as the README's main command.
set -euo pipefail
cd "$(dirname "$0")/.."
exec scripts/dev demo "$@"
