#!/usr/bin/env bash
# Download the wheels the lent GPU machine lacks into .whl/ (ignored; carried with `carry: [".whl"]`,
# installed by `tools/device_adc.sh setup`). The device image has torch, numpy, pandas, matplotlib,
# scipy, scikit-image, pillow, opencv and click (KINDS.md); typer >= 0.29 needs pydantic, which it
# lacks (stop 42: every job failed on the import). DracoPy (5 MB) only with `--draco`: the carry
# limit is 64 MiB with the data.
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(gsplat==1.5.3 torchac==0.9.3 typer shellingham rich markdown-it-py mdurl pygments annotated-doc
      pydantic pydantic-core typing-inspection annotated-types typing-extensions plyfile bjontegaard
      nvidia-ml-py laspy lazrs)
[ "${1:-}" = --draco ] && pkgs+=(DracoPy)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 -d .whl "${pkgs[@]}"
du -sh .whl
