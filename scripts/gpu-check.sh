#!/usr/bin/env bash
# gpu-check.sh — on a machine with an NVIDIA GPU: does rbee use it?
#
#   make build && scripts/gpu-check.sh            (make gpu-check does both)
#
# It installs the CUDA engine bundle the way a hive does (the pinned npm
# package, from the registry or CUDA_TARBALL=FILE), runs a worker on gpu0
# through keeper, queen and hive, compares NVML's view of the GPU with the
# engine's (its CUDA backend, asked by rbee-worker --list-devices), and
# prints tokens/s — beside llama-server's CUDA figure when LLAMA_SERVER
# names a CUDA build of it (llama.cpp's, same release: v0.5.0 / b7xxx).
#
# Everything happens under a temporary home, removed at the end; nothing
# outside it changes. Not part of make test (CI has no GPU). Under 5
# minutes on a warm machine: the CUDA package is 143 MB.
#
# Environment:
#   BIN=dir            rbee, rbee-hive and rbee-worker (default: ./bin)
#   MODEL=file.gguf    the model to run (default: random-75m, generated)
#   CUDA_TARBALL=file  the pinned @node-llama-cpp/linux-x64-cuda tarball,
#                      where the registry cannot be reached
#   LLAMA_SERVER=path  a CUDA build of llama-server, for the comparison
#   TOKENS=n           tokens to generate for the figure (default 256)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN:-$root/bin}
tokens=${TOKENS:-256}
say() { printf 'gpu-check: %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

command -v nvidia-smi >/dev/null || die "no nvidia-smi: this machine has no NVIDIA driver (nothing to check)"
nvidia-smi --query-gpu=index,name --format=csv,noheader >/dev/null || die "nvidia-smi fails: the driver does not answer"
for b in rbee rbee-hive rbee-worker; do
	[ -x "$bin/$b" ] || die "no $bin/$b: run make build (or set BIN)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/rbee-gpu-check.XXXXXX")
port=$(( 20000 + RANDOM % 20000 ))
export HOME=$work RBEE_HOME=$work/.rbee RBEE_QUEEN=127.0.0.1:$port
unset RBEE_ENGINE RBEE_NVML_LIBRARY
cleanup() {
	"$bin/rbee" queen stop >/dev/null 2>&1 || true
	# Whatever this check started carries its home on the command line.
	pkill -f -- "$work" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

say "driver and GPUs (nvidia-smi):"
nvidia-smi --query-gpu=index,name,driver_version,memory.total,memory.free --format=csv,noheader | sed 's/^/  /' >&2

say "rbee doctor:"
"$bin/rbee" doctor | sed 's/^/  /' >&2 || true

if [ -n "${CUDA_TARBALL:-}" ]; then
	say "installing the CUDA bundle from $CUDA_TARBALL"
	"$bin/rbee" worker install --hive localhost "$CUDA_TARBALL" >&2 || die "rbee worker install $CUDA_TARBALL"
fi

command -v go >/dev/null || [ -n "${MODEL:-}" ] || die "no MODEL given and no Go to generate one: MODEL=file.gguf"
if command -v go >/dev/null; then
	(cd "$root" && go run ./internal/cmd/mkmodels -out "$work/models" -only alphabet >&2) || die "mkmodels"
	first=$work/models/alphabet.gguf
else
	first=$MODEL
fi

say "rbee infer on gpu0 (the hive installs the pinned CUDA bundle on first use when none is):"
"$bin/rbee" infer --hive localhost --device gpu0 --model "$first" --explain --temperature 0 --max-tokens 8 abc 2>"$work/infer.err" ||
	{ cat "$work/infer.err" >&2; die "rbee infer on gpu0"; }
engine=$(sed -n 's/.*engine \(v[^ ,")]*\).*/\1/p' "$work/infer.err" | head -n 1)
case "$engine" in
*cuda*) say "worker runs on engine $engine" ;;
*) cat "$work/infer.err" >&2; die "the worker did not run on the CUDA bundle (engine ${engine:-unknown})" ;;
esac
cuda_dir=$(ls -d "$RBEE_HOME"/engines/*cuda* 2>/dev/null | head -n 1)
[ -n "$cuda_dir" ] || die "no CUDA bundle under $RBEE_HOME/engines"

model=${MODEL:-}
if [ -z "$model" ]; then
	say "generating random-75m (Q4_K_M) for the figure"
	(cd "$root" && go run ./internal/cmd/mkmodels -out "$work/models" -only bench -engine "$cuda_dir" >&2) || die "mkmodels"
	model=$work/models/random-75m-q4_k_m.gguf
fi
out=$("$bin/rbee" infer --hive localhost --device gpu0 --model "$model" --temperature 0 --max-tokens "$tokens" --json "The quick brown fox" 2>>"$work/infer.err") ||
	{ cat "$work/infer.err" >&2; die "rbee infer of $model on gpu0"; }
rate=$(printf '%s\n' "$out" | sed -n 's/.*"tokens_per_second":\([0-9.]*\).*/\1/p' | tail -n 1)

say "NVML's view against the engine's:"
status=$("$bin/rbee" hive status localhost --json)
nvml_total=$(printf '%s' "$status" | tr ',' '\n' | sed -n '/"id":"gpu0"/,/}/p' | sed -n 's/.*"total_bytes":\([0-9]*\).*/\1/p' | head -n 1)
backend=$(printf '%s' "$status" | tr ',' '\n' | sed -n '/"id":"gpu0"/,/}/p' | sed -n 's/.*"backend":"\([^"]*\)".*/\1/p' | head -n 1)
eng=$(CUDA_DEVICE_ORDER=PCI_BUS_ID "$bin/rbee-worker" --list-devices --engine "$cuda_dir" | grep '"CUDA0"' || true)
eng_total=$(printf '%s' "$eng" | sed -n 's/.*"total_bytes":\([0-9]*\).*/\1/p')
say "  NVML gpu0: total $nvml_total bytes, engine name ${backend:-none}"
say "  CUDA0:     total ${eng_total:-?} bytes ($(printf '%s' "$eng" | sed -n 's/.*"description":"\([^"]*\)".*/\1/p'))"
[ "$backend" = CUDA0 ] || die "gpu0 is not driven by CUDA0 (backend '${backend}')"
[ -n "$eng_total" ] && [ -n "$nvml_total" ] || die "a total is missing"
diff=$(( nvml_total > eng_total ? nvml_total - eng_total : eng_total - nvml_total ))
[ $(( diff * 100 / nvml_total )) -le 5 ] || die "NVML and CUDA disagree on gpu0's memory by more than 5%"

say "rbee-worker on gpu0: ${rate:-?} tokens/s ($tokens tokens, greedy)"
if [ -n "${LLAMA_SERVER:-}" ]; then
	lport=$(( port + 1 ))
	"$LLAMA_SERVER" -m "$model" -ngl 999 --port "$lport" --host 127.0.0.1 >"$work/llama-server.log" 2>&1 &
	for _ in $(seq 1 120); do curl -sf "127.0.0.1:$lport/health" >/dev/null && break; sleep 0.5; done
	lrate=$(curl -sf "127.0.0.1:$lport/completion" -H 'Content-Type: application/json' \
		-d "{\"prompt\":\"The quick brown fox\",\"n_predict\":$tokens,\"temperature\":0,\"ignore_eos\":true}" |
		sed -n 's/.*"predicted_per_second":\([0-9.]*\).*/\1/p')
	say "llama-server (CUDA) on the same model: ${lrate:-?} tokens/s"
fi
say "ok"
