#!/usr/bin/env bash
# rpc.sh ENGINE_DIR CACHE_DIR — build llama.cpp's RPC backend (libggml-rpc.so)
# and RPC server (rpc-server) for the CPU engine bundle in ENGINE_DIR, and
# print the directory holding them (getengine -rpc adds them to the bundle).
#
# The source is the llama.cpp release the bundle is built from:
# node-llama-cpp@3.22.1 on the npm registry ships it as
# llama/gitRelease.bundle, a git bundle. Only the RPC pieces are compiled
# (ggml/src/ggml-rpc, tools/rpc/rpc-server.cpp), with the system g++, and
# linked against the bundle's own libggml-base.so and libggml.so, so the
# result loads beside them and nothing else of ggml is duplicated.
#
# The build must not ask more of a host's C and C++ runtimes than the
# bundle's own libraries do. Debian 12's g++ 12 binds
# std::condition_variable::wait to GLIBCXX_3.4.30 (the bundle needs at most
# 3.4.29): the reference is pinned to the GLIBCXX_3.4.11 version of the same
# function, which differs only in being noexcept (it matters to
# pthread_cancel, which ggml never uses). Linking libstdc++ statically is no
# way out: Debian 12's libstdc++.a and libgcc_eh.a need glibc 2.35 and 2.36
# (_dl_find_object, arc4random), the bundle 2.34. The versions are checked
# after the build, which fails if either file needs more than the bundle.
#
# The result is cached in CACHE_DIR under a key of the bundle's libraries
# and this script; a second run prints the cached directory at once.
# Needs git, g++, objdump (binutils) and, unless the tarball is cached,
# curl (Debian: apt-get install g++ git curl).
set -euo pipefail

engine=${1:?usage: rpc.sh ENGINE_DIR CACHE_DIR}
cache=${2:?usage: rpc.sh ENGINE_DIR CACHE_DIR}
pkg=node-llama-cpp
ver=3.22.1
# sha512 of the tarball, npm's dist.integrity
# sha512-bltIipuWmc123H7tMIgDGKSsSrhmhlQYeVUC48XTjVW7XGJJiJJyCdlTMzQ/LiWoPkGDpcL4FviDpgw7qfTiDw== in hex.
sum=6e5b488a9b9699cd76dc7eed30880318a4ac4ab866865418795502e3c5d38d55bb5c624988927209d95333343f2e25a83e4183a5c2f816f883a60c3ba9f4e20f

say() { echo "rpc: $*" >&2; }
die() {
	say "$*"
	exit 1
}

for f in libggml-base.so libggml.so libllama.so; do
	[[ -e $engine/$f ]] || die "$engine/$f not found: run getengine first (make engine)"
done
mkdir -p "$cache"
engine=$(cd "$engine" && pwd)
cache=$(cd "$cache" && pwd)

key=$(cat "$engine/libggml-base.so" "$engine/libggml.so" "$0" | sha256sum | cut -c1-16)
out=$cache/rpc-$key
if [[ -f $out/libggml-rpc.so && -x $out/rpc-server ]]; then
	say "using $out (built before)"
	echo "$out"
	exit 0
fi
for tool in git g++ objdump tar sha256sum sha512sum; do
	command -v "$tool" >/dev/null || die "$tool not found (Debian: apt-get install g++ git)"
done

tgz=$cache/$pkg-$ver.tgz
# stdout is the answer (the directory): nothing else may be written there.
if ! echo "$sum  $tgz" | sha512sum --quiet -c - >/dev/null 2>&1; then
	command -v curl >/dev/null || die "curl not found (Debian: apt-get install curl)"
	registry=${RBEE_NPM_REGISTRY:-${NPM_CONFIG_REGISTRY:-${npm_config_registry:-https://registry.npmjs.org/}}}
	url=${registry%/}/$pkg/-/$pkg-$ver.tgz
	say "downloading $url"
	curl -fsSL --retry 3 -o "$tgz.part" "$url"
	echo "$sum  $tgz.part" | sha512sum --quiet -c - >&2 || die "$url: sha512 mismatch"
	mv "$tgz.part" "$tgz"
fi

work=$(mktemp -d "$cache/.rpc-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
tar -xzf "$tgz" -C "$work" package/llama/gitRelease.bundle
git clone --quiet "$work/package/llama/gitRelease.bundle" "$work/src" 2>/dev/null
src=$work/src
say "building libggml-rpc.so and rpc-server from $pkg@$ver's llama.cpp source"

cat >"$work/compat.h" <<'EOF'
/* Bind std::condition_variable::wait to its GLIBCXX_3.4.11 version (see rpc.sh). */
__asm__(".symver _ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE,"
        "_ZNSt18condition_variable4waitERSt11unique_lockISt5mutexE@GLIBCXX_3.4.11");
EOF
cflags=(-std=c++17 -O3 -DNDEBUG -fPIC -pthread -D_GNU_SOURCE -D_XOPEN_SOURCE=600
	-I"$src/ggml/include" -I"$src/ggml/src" -include "$work/compat.h"
	-DGGML_SHARED -DGGML_BACKEND_SHARED -ffile-prefix-map="$src/"=)
# $ORIGIN: both find the bundle's libraries beside them, as its own do.
ldflags=(-L"$engine" '-Wl,-rpath,$ORIGIN' -Wl,--no-undefined -Wl,--as-needed)
mkdir -p "$work/out"
g++ "${cflags[@]}" -shared -DGGML_BACKEND_DL -DGGML_BACKEND_BUILD \
	"$src/ggml/src/ggml-rpc/ggml-rpc.cpp" "$src/ggml/src/ggml-rpc/transport.cpp" \
	-o "$work/out/libggml-rpc.so" -Wl,-soname,libggml-rpc.so "${ldflags[@]}" -l:libggml-base.so &
g++ "${cflags[@]}" "$src/tools/rpc/rpc-server.cpp" \
	-o "$work/out/rpc-server" "${ldflags[@]}" -l:libggml.so -l:libggml-base.so &
wait -n && wait -n || die "compile failed"

# maxver PREFIX FILE… prints the highest symbol version PREFIX_x.y.z the
# files need ("" when none).
maxver() {
	local prefix=$1
	shift
	objdump -T "$@" | grep -o "(${prefix}_[0-9.]*)" | tr -d '()' | sort -uV | tail -1
}
for prefix in GLIBC GLIBCXX CXXABI; do
	have=$(maxver "$prefix" "$engine/libllama.so" "$engine/libggml.so" "$engine/libggml-base.so")
	need=$(maxver "$prefix" "$work/out/libggml-rpc.so" "$work/out/rpc-server")
	[[ -z $need || $(printf '%s\n%s\n' "$have" "$need" | sort -V | tail -1) == "$have" ]] ||
		die "the build needs $need, the bundle's own libraries at most $have"
	say "needs ${need:-no $prefix} (the bundle: ${have:-none})"
done
LD_LIBRARY_PATH=$engine ldd "$work/out/rpc-server" | grep -q 'not found' && die "rpc-server: unresolved libraries"

rm -rf "$out"
mv "$work/out" "$out"
say "built $out"
echo "$out"
