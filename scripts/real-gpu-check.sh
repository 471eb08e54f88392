#!/bin/bash
# Real-GPU check: detection through NVML and through the nvidia-smi fallback, the raw nvidia-smi
# outputs (parser fixtures), and a provider node on the real GPUs leasing one to a renter node.
# Usage: cargo build --release -p gpumesh-cli && scripts/real-gpu-check.sh (writes to $OUT or
# /tmp/gpucheck-out). Without a GPU: SIM="--simulate-gpus H100-SXM-80GB:2" scripts/real-gpu-check.sh
set -u
B=${GPUMESH:-target/release/gpumesh}
O=${OUT:-/tmp/gpucheck-out}; mkdir -p "$O"
SIM=${SIM:-}
step() { echo; echo "== $*"; }
waitfor() { # waitfor SECONDS CMD...: rerun CMD until it succeeds or time is up
  local end=$((SECONDS + $1)); shift
  until "$@"; do [ $SECONDS -ge $end ] && { echo "TIMEOUT: $*"; return 1; }; sleep 0.2; done
}
step host; uname -srm; nproc; nvidia-smi -L
step "gpumesh gpus"; time $B gpus; $B gpus --json > "$O/gpus.json"; cat "$O/gpus.json"
step "raw nvidia-smi"
nvidia-smi --query-gpu=index,uuid,name,memory.total,compute_cap,driver_version,mig.mode.current --format=csv,noheader,nounits > "$O/smi_query.csv"; echo "rc=$?"; cat "$O/smi_query.csv"
nvidia-smi --version > "$O/smi_version.txt"; cat "$O/smi_version.txt"
nvidia-smi > "$O/smi_table.txt"
step "gpumesh gpus through the nvidia-smi fallback (NVML made unloadable for gpumesh only)"
REAL=$(command -v nvidia-smi); mkdir -p /tmp/nonvml/bin
cp "$(ldconfig -p | awk '/libz\.so\.1 /{print $NF; exit}')" /tmp/nonvml/libnvidia-ml.so.1
printf '#!/bin/sh\nexec env -u LD_LIBRARY_PATH %s "$@"\n' "$REAL" > /tmp/nonvml/bin/nvidia-smi; chmod +x /tmp/nonvml/bin/nvidia-smi
LD_LIBRARY_PATH=/tmp/nonvml PATH=/tmp/nonvml/bin:$PATH $B gpus
LD_LIBRARY_PATH=/tmp/nonvml PATH=/tmp/nonvml/bin:$PATH $B gpus --json > "$O/gpus_smi.json"; cat "$O/gpus_smi.json"
P=$(mktemp -d); R=$(mktemp -d)
step "provider node on the real GPUs"
$B --data-dir "$P" --api 127.0.0.1:0 node --listen /ip4/127.0.0.1/tcp/0 --no-mdns --network gpucheck --price 3.10 $SIM > "$O/provider.log" 2>&1 &
waitfor 30 $B --data-dir "$P" status --json > "$O/provider_status.json" 2>/dev/null; cat "$O/provider_status.json"
ADDR=$(grep -o '"/ip4/127.0.0.1/tcp/[^"]*' "$O/provider_status.json" | head -1 | tr -d '"')
PID=$(grep -o '"peer_id": "[^"]*' "$O/provider_status.json" | cut -d'"' -f4)
$B --data-dir "$P" offers --json > "$O/provider_offers.json"; cat "$O/provider_offers.json"
step "renter node, bootstrap $ADDR"
$B --data-dir "$R" --api 127.0.0.1:0 node --listen /ip4/127.0.0.1/tcp/0 --no-mdns --network gpucheck --bootstrap "$ADDR" > "$O/renter.log" 2>&1 &
has_offer() { $B --data-dir "$R" offers "provider=$PID" --json 2>/dev/null | grep -q offer_id; }
waitfor 30 has_offer && echo "renter sees the provider's offer"
step "query live capacity"; $B --data-dir "$R" query "provider=$PID" --timeout 5s
step "lease one GPU"; $B --data-dir "$R" lease --best "provider=$PID" --gpus 1 --duration 10m --json | tee "$O/lease.json"
LID=$(grep -o '"lease_id": "[^"]*' "$O/lease.json" | head -1 | cut -d'"' -f4)
step "provider's leases"; $B --data-dir "$P" leases
step "release $LID"; $B --data-dir "$R" release "$LID"
step "provider's leases after release"; $B --data-dir "$P" leases
kill %1 %2; wait
grep -iE "warn|error" "$O/provider.log" "$O/renter.log" | head -20
echo; echo "== done"
