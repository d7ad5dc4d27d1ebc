#!/usr/bin/env bash
# The README's main command: installs what is missing, builds fastvlm-cli, and describes the bundled
# scene images with the shipped model (models/fastvlm-scenes), printing answers and timings.
# Pass a model folder and images to describe your own:  scripts/run_demo.sh MODEL_DIR IMAGE...
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake -S . -B build/release -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build/release --target fastvlm-cli -j"$(nproc)"
cli=build/release/examples/fastvlm-cli

model=${1:-models/fastvlm-scenes}
shift || true
if [ "$#" -gt 0 ]; then
  images=("$@")
else
  images=("$model"/images/*.png "$model"/images/*.jpg)
fi
for img in "${images[@]}"; do
  [ -f "$img" ] || continue
  echo "== $img"
  "$cli" run --model "$model" --image "$img" --prompt "Describe the image." --max-tokens 64
done
