#!/usr/bin/env bash
# Run the proof inside a live cluster's feature-server pod (dev or prod) and copy the report out.
#   proof/check_cluster.sh dev            -> proof-dev.json + proof-dev.md in the current directory
# Needs kubectl access to the namespace. The pod already has the contracts mount, Redis and S3 access.
set -euo pipefail
env="${1:?usage: proof/check_cluster.sh dev|prod}"
ns="feature-platform-${env}"
deploy="deploy/feature-platform-server"
kubectl -n "$ns" rollout status "$deploy" --timeout=300s
status=0
kubectl -n "$ns" exec "$deploy" -- featurectl proof --env "$env" --report "/tmp/proof-${env}" || status=$?
for ext in json md; do
  kubectl -n "$ns" exec "$deploy" -- cat "/tmp/proof-${env}.${ext}" > "proof-${env}.${ext}"
done
if [ "$status" -ne 0 ]; then
  echo "proof FAILED for ${env}; recent feature-server logs:" >&2
  kubectl -n "$ns" logs "$deploy" --tail=100 >&2 || true
fi
exit "$status"
