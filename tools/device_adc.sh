#!/usr/bin/env bash
# GPU runs of adc-gs on the lent device (see the device tool's README). Code and data are copied to
# /tmp first so later calls (which replace the working tree) do not disturb running jobs.
#   tools/device_adc.sh setup            install carried wheels, copy code + .devdata, build gsplat/torchac
#   tools/device_adc.sh smoke SCENE N    N iterations of adc-gs mid on SCENE (checks, step time)
#   tools/device_adc.sh launch NAME ARGS launch `evalkit run ARGS --out /tmp/res/NAME` in the background (setsid)
#   tools/device_adc.sh collect          tar /tmp/res into $OUT
set -euo pipefail
export PYTHONPATH=/tmp/code:/tmp/site PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export EVALKIT_CACHE=/tmp/cache EVALKIT_REQUIRE_GSPLAT=1
case "$1" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    rm -rf /tmp/code && mkdir -p /tmp/code /tmp/data /tmp/res
    cp -r evalkit methods datasets pyproject.toml /tmp/code/
    [ -d .devdata ] && cp -rn .devdata/* /tmp/data/ || true
    cd /tmp/code
    time python3 -c "import torch, gsplat; from gsplat.cuda._backend import _C; print('gsplat ok', torch.cuda.get_device_name())"
    time python3 -c "from evalkit.codec import arith; arith.ensure_backend(); print('torchac ok')"
    ;;
  smoke)
    cd /tmp/code
    python3 -m evalkit.cli run --method adc-gs --dataset dnerf --scene "$2" --rate mid --iterations "$3" \
      --data-root /tmp/data --out /tmp/res/smoke --device cuda --force
    ;;
  launch)
    name=$2; shift 2
    mkdir -p /tmp/res/$name
    cd /tmp/code
    setsid nohup python3 -m evalkit.cli run "$@" --data-root /tmp/data --out /tmp/res/$name --device cuda \
      > /tmp/res/$name.out 2>&1 < /dev/null &
    echo "launched $name"
    ;;
  wait)
    # sleep up to $2 seconds or until no evalkit run is left
    end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ] && pgrep -f "evalkit.cli run" > /dev/null; do sleep 10; done
    grep -h -E "PSNR .* bytes|FAILED" /tmp/res/*/dnerf/*/*/*.log || true
    ;;
  collect)
    tail -n 3 /tmp/res/*.out || true
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv || true
    tar czf "$OUT/res.tgz" -C /tmp res --exclude='*.evk' || true
    ls -la "$OUT"
    ;;
esac
# (the machine goes back 30 s after a call ends, killing background jobs: chain calls with `wait`)
