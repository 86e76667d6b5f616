#!/usr/bin/env bash
# Packs DALI's CUDA 13 wheels for a GPU machine that has no DALI and takes at most 64 MiB per call.
#
# The nvidia-dali-cuda130 wheel alone is 199 MB. This script downloads it with its two native
# dependencies (nvimgcodec, nvcomp) and the pure/Python-3.12 packages DALI imports (astunparse,
# gast, makefun, optree) plus nvJPEG for the GPU JPEG decoder; unpacks the three big wheels into
# one site folder, drops the extension modules built for other Pythons, and writes that folder as
# a tar.xz split into parts of 60 MB (about 170 MB in three parts), with their sha256 sums:
#     .dali/part_0 .dali/part_1 .dali/part_2 .dali/parts.sha256 .dali/deps/*.whl
# Each device call carries one part (`carry: [".dali/part_N"]`); the parts stay in the repo copy
# while the machine is warm, and `STAGES="... dali ..." bash benchmarks/gpu_suite.sh` in the call
# that brings the last part checks, unpacks and installs them (see gpu_suite.sh, dali_setup).
# Needs network access here, never there. Add `/.dali/` to .git/info/exclude.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${1:-$REPO/.dali}"
PYV="${PYV:-3.12}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
platform=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
get() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
          "${platform[@]}" -d "$@"; }
get "$WORK/big" nvidia-dali-cuda130==2.4.0 "nvidia-nvimgcodec-cu13==0.9.*" "nvidia-libnvcomp-cu13==6.*"
mkdir -p "$DEST/deps" && rm -f "$DEST"/part_* "$DEST"/deps/*.whl
get "$DEST/deps" astunparse gast makefun optree "nvidia-nvjpeg>=13,<14"
mkdir -p "$WORK/site"
for w in "$WORK"/big/*.whl; do python3 -m zipfile -e "$w" "$WORK/site"; done
tag="cpython-${PYV/./}-"
find "$WORK/site" -name "*.cpython-3*" ! -name "*${tag}*" -delete  # other Pythons' extension modules
rm -rf "$WORK/site/nvidia/libnvcomp/bin" "$WORK/site/nvidia/libnvcomp/include" "$WORK/site/nvidia/nvimgcodec/include"
tar -C "$WORK/site" -cf - . | xz -T0 -6 > "$WORK/dali_site.tar.xz"
split -b 60000000 -d -a 1 "$WORK/dali_site.tar.xz" "$DEST/part_"
(cd "$DEST" && sha256sum part_* > parts.sha256 && ls -la part_* deps)
