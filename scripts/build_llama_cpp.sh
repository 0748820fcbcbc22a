#!/usr/bin/env bash
# Build llama.cpp's `llama-bench` (the peer of benchmarks/cpu_vs_peers.py and long_context.py) and `llama-server`
# (the peer of benchmarks/serve_load.py) from the llama.cpp sources vendored in the llama-cpp-python sdist on PyPI
# (the only registry this machine reaches).
# Usage: bash scripts/build_llama_cpp.sh [DEST]   (DEST defaults to .peers/llama.cpp)
# Result: DEST/bin/llama-bench and DEST/bin/llama-server; the benchmarks look there (or $LLAMA_BENCH /
# $LLAMA_SERVER, or PATH).
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
DEST="$(realpath -m "${1:-.peers/llama.cpp}")"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
python -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==${VERSION}" -d "$WORK"
tar xzf "$WORK"/llama_cpp_python-"${VERSION}".tar.gz -C "$WORK"
SRC="$WORK/llama_cpp_python-${VERSION}/vendor/llama.cpp"
# The instruction sets from /proc/cpuinfo, except AMX: -DGGML_NATIVE=ON compiles AMX tile code where the CPU lists
# amx_*, and on machines whose kernel does not grant the tile state that build dies of SIGILL at its first matmul.
has() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
ISA=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2="$(has avx2)" -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)"
     -DGGML_AVX512="$(has avx512bw)" -DGGML_AVX512_VBMI="$(has avx512vbmi)" -DGGML_AVX512_VNNI="$(has avx512_vnni)"
     -DGGML_AVX512_BF16="$(has avx512_bf16)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release "${ISA[@]}" -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_OPENSSL=OFF \
      -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$WORK/build" --target llama-bench llama-server -j "$(nproc)" >/dev/null
mkdir -p "$DEST/bin"
for exe in llama-bench llama-server; do
    cp "$WORK/build/bin/$exe" "$DEST/bin/$exe.tmp" && mv "$DEST/bin/$exe.tmp" "$DEST/bin/$exe"
done
echo "llama-bench and llama-server (llama-cpp-python ${VERSION} sources) -> $DEST/bin/"
