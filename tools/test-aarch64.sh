#!/usr/bin/env bash
# Runs ward's kernel tests for AArch64 (the NEON paths) on an x86-64 Debian/Ubuntu machine:
# cross-compiles the library tests and runs them under qemu-user, once on an emulated CPU with
# the dot-product extension (`Isa::NeonDot` and `Isa::Neon` both tested) and once on a
# Cortex-A53 without it (`Isa::Neon` only). On an AArch64 machine plain `cargo test --release`
# covers the same ground natively.
#
#   tools/test-aarch64.sh [TEST-FILTER]      # default filter: engine::kernels
#
# Needs root for the packages (gcc-aarch64-linux-gnu, qemu-user) if they are missing, and
# `rustup target add aarch64-unknown-linux-gnu`. The first build takes 15-25 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
filter="${1:-engine::kernels}"
target=aarch64-unknown-linux-gnu

if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64 >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user
fi
rustup target list --installed | grep -qx "$target" || rustup target add "$target"

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
sysroot=/usr/aarch64-linux-gnu

for cpu in max cortex-a53; do
  echo "== qemu-aarch64 -cpu $cpu"
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -cpu $cpu -L $sysroot" \
    cargo test --release --target "$target" --lib -- "$filter"
done
