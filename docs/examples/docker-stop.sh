#!/usr/bin/env bash
# gpumesh on_lease_end hook: remove the lease's container. Gets the same JSON as the start
# hook on stdin (with "event":"end" and the final "state": released, expired or failed).
set -euo pipefail
id=$(jq -r .lease_id)
docker rm -f "gpumesh-$id" >/dev/null 2>&1 || true
