#!/usr/bin/env bash
# gpumesh on_lease_start hook: run a container with exactly the leased GPUs and an SSH server,
# and print how to reach it. The lease arrives as JSON on stdin, e.g.
#   {"event":"start","lease_id":"2d7c74d7a634d68c","renter":"12D3KooW…","offer_id":"…",
#    "gpu_uuids":["GPU-7d81…"],"gpu_indices":[0],"start":"…","end":"…","end_unix":1795000000,
#    "ssh_key":"ssh-ed25519 AAAA… you@laptop","state":"starting"}
# Whatever JSON object this prints becomes the grant's `access` (shown by `gpumesh lease`).
# A non-zero exit or a run longer than hooks.timeout rejects the lease and frees the GPUs.
#
# Needs: docker with the NVIDIA container toolkit, jq. Configure in gpumesh.toml:
#   [hooks]
#   on_lease_start = "/usr/local/bin/gpumesh-docker-start"
#   on_lease_end   = "/usr/local/bin/gpumesh-docker-stop"
#   timeout = "60s"
set -euo pipefail

IMAGE="${GPUMESH_IMAGE:-nvcr.io/nvidia/pytorch:24.10-py3}"
PUBLIC_HOST="${GPUMESH_PUBLIC_HOST:-$(hostname -I | awk '{print $1}')}"

lease=$(cat)
id=$(jq -r .lease_id <<<"$lease")
gpus=$(jq -r '.gpu_uuids | join(",")' <<<"$lease")
key=$(jq -r '.ssh_key // empty' <<<"$lease")
end_unix=$(jq -r .end_unix <<<"$lease")
name="gpumesh-$id"

if [ -z "$key" ]; then
  echo "this provider needs an SSH key: lease with --ssh-key ~/.ssh/id_ed25519.pub" >&2
  exit 1
fi

# Only the leased GPUs are visible inside. The container stops itself at the lease end even
# if the end hook never runs.
docker run -d --rm --name "$name" \
  --gpus "\"device=$gpus\"" \
  --label gpumesh.lease="$id" \
  -p 0:22 \
  -e SSH_KEY="$key" \
  "$IMAGE" \
  bash -c 'apt-get -qq update >/dev/null && apt-get -qq install -y openssh-server >/dev/null &&
           mkdir -p /root/.ssh /run/sshd && echo "$SSH_KEY" > /root/.ssh/authorized_keys &&
           chmod 600 /root/.ssh/authorized_keys && /usr/sbin/sshd &&
           sleep $(( '"$end_unix"' - $(date +%s) ))' >/dev/null

port=$(docker port "$name" 22/tcp | head -n1 | awk -F: '{print $NF}')
jq -cn --arg host "$PUBLIC_HOST" --argjson port "$port" --arg name "$name" \
  '{host: $host, port: $port, user: "root", container: $name,
    ssh: "ssh -p \($port) root@\($host)"}'
