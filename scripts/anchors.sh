#!/usr/bin/env bash
# anchors.sh OUT_DIR CACHE_DIR — build llama.cpp's llama-server and llama-bench
# (CPU only) from the source node-llama-cpp@3.22.1 ships on the npm registry:
# llama/gitRelease.bundle, a git bundle of the llama.cpp release our engine
# bundle is built from. They are the speed rbee-worker is measured against
# (make bench). Needs npm, git, cmake and g++ (Debian: apt-get install cmake g++).
set -euo pipefail

out=${1:?usage: anchors.sh OUT_DIR CACHE_DIR}
cache=${2:?usage: anchors.sh OUT_DIR CACHE_DIR}
pkg=node-llama-cpp@3.22.1
jobs=${ANCHORS_JOBS:-$(nproc)}

if [[ -x $out/llama-server && -x $out/llama-bench ]]; then
	echo "anchors: $out/llama-server and llama-bench exist (rm -r $out to rebuild)" >&2
	exit 0
fi
for tool in npm git cmake g++ tar; do
	command -v "$tool" >/dev/null || { echo "anchors: $tool not found (Debian: apt-get install cmake g++ git npm)" >&2; exit 1; }
done
mkdir -p "$out" "$cache"
out=$(cd "$out" && pwd)
cache=$(cd "$cache" && pwd)

tgz=$cache/node-llama-cpp-3.22.1.tgz
if [[ ! -f $tgz ]]; then
	echo "anchors: npm pack $pkg" >&2
	(cd "$cache" && npm pack --silent "$pkg" >/dev/null)
fi
work=$cache/anchors-src
rm -rf "$work"
mkdir -p "$work"
tar -xzf "$tgz" -C "$work" package/llama/gitRelease.bundle package/llama/binariesGithubRelease.json 2>/dev/null ||
	tar -xzf "$tgz" -C "$work" package/llama/gitRelease.bundle
release=$(sed -n 's/.*"release": *"\([^"]*\)".*/\1/p' "$work/package/llama/binariesGithubRelease.json" 2>/dev/null || true)
echo "anchors: llama.cpp release ${release:-unknown} from $pkg's git bundle" >&2
git clone --quiet "$work/package/llama/gitRelease.bundle" "$work/llama.cpp"

cmake -S "$work/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
	-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
	-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$work/build" -j "$jobs" --target llama-server llama-bench >&2
cp "$work/build/bin/llama-server" "$work/build/bin/llama-bench" "$out/"
echo "${release:-unknown}" >"$out/RELEASE"
rm -rf "$work"
echo "anchors: built $out/llama-server and $out/llama-bench (llama.cpp ${release:-unknown})" >&2
