#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from the folders tools/gpu-bundle.sh
# wrote (`.gpu/1`, `.gpu/2`, ...; each device call carries one). Until every part is there it
# says which are missing and stops; the call that completes the set assembles the binaries and
# the model and then, each step timed out on its own and logged to $OUT/gpu-check.log:
#   1. the GPU, its driver and the CUDA libraries the binary resolves;
#   2. the candle backend's tests with the CUDA device added (`WARD_TEST_CUDA=1`): the same top
#      token and close log-probabilities as ward's CPU engine, on the model and on tiny files;
#   3. `ward bench --engine` on `WARD_DEVICE=cuda` and on the CPU engine with all cores
#      (`-p 512 -n 128 -r 3 --parallel 8 --json`, copies in $OUT);
#   4. one greedy completion on each device, side by side.
set -uo pipefail
cd "$(dirname "$0")/.." || exit
g=.gpu
out="${OUT:-$g/out}"
mkdir -p "$out"

step() { # NAME COMMAND...: one step, logging how it ended (each command has its own timeout)
  local name=$1; shift
  echo; echo "== $name ($(date -u +%T))"
  "$@"
  echo "== $name: exit $?"
}

# cuBLAS, cuRAND and the runtime, from one folder that holds them all if there is one (the
# toolkit's, or a Python CUDA package's), else each from wherever it is.
cuda_libs() {
  local libs=(libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10) d lib
  where() { find /usr/local /opt /usr/lib -xdev -name "$1" -printf '%h\n' 2>/dev/null; }
  for d in $(where libcublas.so.13); do
    for lib in "${libs[@]}"; do [ -e "$d/$lib" ] || continue 2; done
    echo "$d"
    return
  done
  for lib in "${libs[@]}"; do
    where "$lib" | head -n 1
  done | sort -u | paste -sd:
}

# A greedy completion's prompt (SmolLM2's chat template).
prompt='<|im_start|>user
Which MITRE ATT&CK technique is PowerShell with an encoded command?<|im_end|>
<|im_start|>assistant
'

to_json() { # NAME SECONDS COMMAND...: COMMAND's output into $out/NAME.json, shown too
  local file="$out/$1.json" secs=$2; shift 2
  timeout "$secs" "$@" >"$file"
  local r=$?; cat "$file"; return $r
}
bench() { # DEVICE
  WARD_DEVICE=$1 to_json "bench-$1" 120 "$run/ward" bench --engine -m "$gguf" -p 512 -n 128 \
    -r 3 --parallel 8 --json
}
greedy() { # DEVICE
  WARD_DEVICE=$1 to_json "greedy-$1" 45 "$run/ward" generate -m "$gguf" --max-tokens 48 --json \
    -p "$prompt"
}

compare_greedy() { # whether both devices chose the same tokens
python3 - "$out/greedy-cuda.json" "$out/greedy-cpu.json" <<'PY'
import json, sys
try:
    cuda, cpu = (json.load(open(p))["tokens"] for p in sys.argv[1:])
except (OSError, ValueError, KeyError) as e:
    sys.exit(f"greedy: nothing to compare ({e})")
same = next((i for i, (a, b) in enumerate(zip(cuda, cpu)) if a != b), min(len(cuda), len(cpu)))
print(f"greedy: the first {same} of {len(cpu)} tokens the same on both devices")
PY
}

main() {
  if [ ! -f "$g/1/manifest" ]; then
    echo "no $g/1/manifest here: carry .gpu/1 (made by tools/gpu-bundle.sh)"
    exit 0
  fi
  local files="" commit="" model="" model_sha256=""
  # shellcheck source=/dev/null
  . "$g/1/manifest"
  missing=()
  for f in $files; do [ -f "$g/$f" ] || missing+=("$f"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "bundle of $commit ($model): still to carry: ${missing[*]}"
    exit 0
  fi

  echo "== assembling the bundle of $commit"
  run="$g/run" home="$g/home"
  mkdir -p "$run" "$home/models"
  for f in $files; do
    case "$f" in
      *.xz) python3 -c 'import lzma, shutil, sys
with lzma.open(sys.argv[1]) as i, open(sys.argv[2], "wb") as o: shutil.copyfileobj(i, o)' \
        "$g/$f" "$run/$(basename "$f" .xz)" ;;
    esac
  done
  chmod +x "$run/ward" "$run/candle_backend"
  gguf="$home/models/$model.gguf"
  for f in $files; do case "$f" in */model.part-*) cat "$g/$f" ;; esac; done >"$gguf"
  got=$(sha256sum "$gguf" | cut -d' ' -f1)
  if [ "$got" != "$model_sha256" ]; then
    echo "$gguf: sha256 $got, expected $model_sha256"
    exit 1
  fi

  LD_LIBRARY_PATH="$(cuda_libs)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export LD_LIBRARY_PATH WARD_HOME="$home"

  # shellcheck disable=SC2016 # `$0` is the binary, expanded by that shell
  step "device" timeout 30 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total \
    --format=csv; lscpu | grep -E "^Model name|^CPU\(s\)"; ldd "$0" | grep -E "cu|not found"' \
    "$run/ward"
  step "candle backend tests on CUDA" env WARD_TEST_CUDA=1 timeout 180 "$run/candle_backend" \
    --test-threads 1
  for dev in cuda cpu; do step "bench $dev" bench $dev; done
  for dev in cuda cpu; do step "greedy $dev" greedy $dev; done
  compare_greedy
}

main 2>&1 | tee -a "$out/gpu-check.log"
