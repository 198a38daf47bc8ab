#!/usr/bin/env bash
# Packs a GPU check for a machine that can build and fetch nothing itself: an NVIDIA driver,
# CUDA's libraries and python3 there, but no Rust and no network, and at most 64 MiB carried
# in per call (the device machines lent to ward's sessions). It writes into `.gpu/` (ignored by
# git), in folders `.gpu/1`, `.gpu/2`, ... of at most PART_MIB each (default: what 64 MiB
# leaves beside the working tree that travels with each call, less 1 MiB):
#   - the `--features cuda` binary and the `candle_backend` test binary, stripped and
#     xz-compressed;
#   - one catalog model's GGUF file, cut into parts, with its sha256.
# tools/gpu-check.sh, run there, puts them together and measures. It builds both binaries
# (12 min from a warm CPU build, most of it candle's CUDA kernels) with the toolkit's env, and
# leaves target/release/ward built with CUDA (`cargo build --release` brings back the CPU one):
#
#   tools/cuda-toolkit.sh && source ~/.cache/ward/cuda-13.0/env.sh
#   tools/gpu-bundle.sh [MODEL]          # default: smollm2-135m-instruct, from ward's cache
#
# It prints the device calls: one per folder, each carrying its folder and running
# tools/gpu-check.sh, which says what is still missing until the last call completes the set.
# The machine keeps what earlier calls carried only while it stays warm, so make the calls
# back to back.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"

model="${1:-smollm2-135m-instruct}"
tree=$(git ls-files -co --exclude-standard -z | du -cb --files0-from=- | tail -n 1 | cut -f1)
if [ -n "${PART_MIB:-}" ]; then part=$((PART_MIB << 20)); else part=$(( (63 << 20) - tree )); fi
home="${WARD_HOME:-$HOME/.cache/ward}"
gguf="$home/models/$model.gguf"
[ -f "$gguf" ] || { echo "no $gguf: run 'ward pull $model' first" >&2; exit 1; }
command -v nvcc >/dev/null || { echo "no nvcc: source the toolkit's env.sh first" >&2; exit 1; }
cargo build --release --features cuda
bin=target/release/ward
test_bin=$(cargo test --release --features cuda --test candle_backend --no-run \
  --message-format=json | python3 -c 'import json, sys
for m in map(json.loads, sys.stdin):
    if m.get("executable") and m["target"]["name"] == "candle_backend":
        print(m["executable"])')
# A binary without the CUDA backend says so when asked for a CUDA device.
said=$(WARD_DEVICE=cuda "$bin" bench --engine -m "$gguf" -p 1 -n 0 -r 1 2>&1 || true)
case "$said" in
  *"not been built with cuda"*) echo "$bin was built without --features cuda" >&2; exit 1 ;;
esac

rm -rf .gpu && mkdir -p .gpu/stage
strip -o .gpu/stage/ward "$bin"
strip -o .gpu/stage/candle_backend "$test_bin"
xz -T0 -6 .gpu/stage/ward .gpu/stage/candle_backend

# Fill the folders in order: the binaries first, then the model's parts.
n=1 used=0 files=()
mkdir -p .gpu/1
for f in ward.xz candle_backend.xz; do
  size=$(stat -c %s ".gpu/stage/$f")
  if (( used > 0 && used + size > part )); then n=$((n + 1)) used=0; mkdir -p ".gpu/$n"; fi
  mv ".gpu/stage/$f" ".gpu/$n/$f"
  used=$((used + size)) files+=("$n/$f")
done
size=$(stat -c %s "$gguf") offset=0 i=0
while (( offset < size )); do
  if (( part - used < (4 << 20) )); then n=$((n + 1)) used=0; mkdir -p ".gpu/$n"; fi
  count=$(( size - offset < part - used ? size - offset : part - used ))
  name=$(printf 'model.part-%02d' "$i")
  dd if="$gguf" of=".gpu/$n/$name" bs=1M iflag=skip_bytes,count_bytes skip="$offset" \
    count="$count" status=none
  used=$((used + count)) offset=$((offset + count)) i=$((i + 1)) files+=("$n/$name")
done
{
  echo "model=$model"
  echo "model_sha256=$(sha256sum "$gguf" | cut -d' ' -f1)"
  echo "files=\"${files[*]}\""
  echo "commit=$(git rev-parse --short HEAD)"
} >.gpu/1/manifest
rm -rf .gpu/stage
du -sh .gpu/*
echo "target/release/ward is the CUDA build now: 'cargo build --release' for the CPU one"
for k in $(seq 1 "$n"); do
  echo "call $k: carry [\".gpu/$k\"], command: bash tools/gpu-check.sh"
done
