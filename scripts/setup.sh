#!/usr/bin/env bash
# Installs the Debian packages fastvlm needs (only those missing). Used by run_demo.sh and test.sh.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libxsimd-dev libstb-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev
      libopenblas-dev libutf8proc-dev libjpeg-dev libcpp-httplib-dev curl haproxy python3 python3-numpy python3-torch python3-pil
      python3-dev pybind11-dev python3-pytest python3-distributed libxxhash-dev ffmpeg clang-14 libfuzzer-14-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js + npm (tokenizer conformance test): any install on PATH will do; else Debian's npm.
command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
