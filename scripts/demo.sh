#!/usr/bin/env bash
# demo.sh WORKER MODEL ENGINE — start rbee-worker, stream a completion of
# "abc" at temperature 0, stop the worker. Exits non-zero if anything fails.
set -euo pipefail
worker=$1 model=$2 engine=$3

coproc W { exec "$worker" --model "$model" --engine "$engine" --listen 127.0.0.1:0; }
trap 'kill "$W_PID" 2>/dev/null || true; wait "$W_PID" 2>/dev/null || true' EXIT

read -r line <&"${W[0]}"   # {"event":"listening","address":...}
addr=$(sed -E 's/.*"address":"([^"]+)".*/\1/' <<<"$line")
read -r line <&"${W[0]}"   # {"event":"ready",...}
echo "worker ready on $addr" >&2

echo '$ curl -N http://'"$addr"'/v1/completions -d '"'"'{"prompt":"abc","temperature":0,"stream":true}'"'" >&2
curl -sSN --fail-with-body "http://$addr/v1/completions" \
	-H 'Content-Type: application/json' \
	-d '{"prompt":"abc","temperature":0,"stream":true}'
