#!/usr/bin/env bash
# Installs the parts of the CUDA 13.0 toolkit that `cargo build --release --features cuda` needs
# (nvcc with its crt headers and cicc, the runtime and CCCL headers, cuBLAS, cuRAND, NVRTC) from
# NVIDIA's wheels on the Python package index, for machines that have no CUDA toolkit but reach
# that index (or a mirror of it) through `python3 -m pip download`.
#
#   tools/cuda-toolkit.sh [PREFIX]        # default PREFIX: ~/.cache/ward/cuda-13.0
#   source PREFIX/env.sh && cargo build --release --features cuda
#
# The build links against the driver library `libcuda.so`. Where no NVIDIA driver is installed
# (a build machine without a GPU) the script writes a link-only stub of it into PREFIX/stub;
# the binary still needs the real driver where it runs, and refuses to start without one.
# CUDA 13.0 needs driver 580 or newer. CUDA_COMPUTE_CAP (default 90, Hopper) names the GPU
# generation that candle's quantized kernels are compiled for: 80 for A100, 89 for L4/L40.
set -euo pipefail

prefix="${1:-${WARD_HOME:-$HOME/.cache/ward}/cuda-13.0}"
mkdir -p "$prefix/wheels"
prefix="$(cd "$prefix" && pwd)"

python3 -m pip download -q --no-deps --only-binary=:all: -d "$prefix/wheels" \
  "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
  "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*" \
  "nvidia-cublas==13.0.*" "nvidia-curand==10.4.*"
for w in "$prefix"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$prefix/root"
done

cuda="$prefix/root/nvidia/cu13"
[ -x "$cuda/bin/nvcc" ] || chmod +x "$cuda"/bin/* "$cuda"/nvvm/bin/*
# The linker looks for unversioned names; the wheels ship only the versioned ones.
for lib in "$cuda"/lib/lib*.so.*; do
  base="${lib##*/}"
  ln -sf "$base" "$cuda/lib/${base%%.so.*}.so"
done

libpath="$cuda/lib"
if ! ldconfig -p 2>/dev/null | grep 'libcuda\.so\.1 ' >/dev/null; then
  # Link-only stub: every driver entry point the bindings declare, each failing if ever called.
  mkdir -p "$prefix/stub"
  # The driver bindings of the cudarc version in Cargo.lock list the entry points.
  repo="$(cd "$(dirname "$0")/.." && pwd)"
  ver="$(awk '/^name = "cudarc"$/ { getline; gsub(/"/, "", $3); print $3 }' "$repo/Cargo.lock")"
  (cd "$repo" && cargo fetch -q)
  cudarc="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"cudarc-$ver" | head -1)"
  grep -ohE '\bfn cu[A-Za-z0-9_]+\(' "$cudarc/src/driver/sys/mod.rs" | sort -u |
    sed -E 's/fn (cu[A-Za-z0-9_]+)\(/int \1(void) { return 999; }/' >"$prefix/stub/libcuda.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$prefix/stub/libcuda.so" "$prefix/stub/libcuda.c"
  libpath="$libpath:$prefix/stub"
  echo "no NVIDIA driver here: linking against a stub; run the binary where the driver is" >&2
fi

cat >"$prefix/env.sh" <<EOF
export CUDA_HOME="$cuda" CUDA_PATH="$cuda" CUDA_ROOT="$cuda"
export PATH="$cuda/bin:\$PATH" LIBRARY_PATH="$libpath\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="\${CUDA_COMPUTE_CAP:-90}"
# At run time: cuBLAS and cuRAND from here (or the system's), the driver from the system.
export LD_LIBRARY_PATH="$cuda/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
EOF
"$cuda/bin/nvcc" --version | tail -1
echo "now: source $prefix/env.sh && cargo build --release --features cuda"
