#!/usr/bin/env bash
# GPU runs of adc-gs on the lent device (see the device tool's README). Code and data are copied to
# /tmp first so later calls (which replace the working tree) do not disturb running jobs.
#   tools/device_adc.sh setup            install carried wheels (tools/device_wheels.sh), copy code + .devdata, build gsplat/torchac
#   tools/device_adc.sh gputest [SECONDS] [FILE...] the tests marked gpu
#   tools/device_adc.sh ccstep [SCENE|PATH] [--compile] 4dgs-cc fine step against 4dgs's (alone)
#   tools/device_adc.sh smoke SCENE N    N iterations of adc-gs mid on SCENE (checks, step time)
#   tools/device_adc.sh synth [NAME] [FRAMES]  the synthetic skeleton scene (D-NeRF layout) into /tmp/data/dnerf
#   tools/device_adc.sh launch NAME ARGS launch `evalkit run ARGS --out /tmp/res/NAME` in the background (setsid)
#   tools/device_adc.sh queue "PHASE ARGS"...  phases one after another in the background
#   tools/device_adc.sh plan FILE      queue the phases listed in FILE (tools/plans/)
#   tools/device_adc.sh resume           copy carried checkpoints (.devresume*/) into /tmp/res
#   tools/device_adc.sh stopjob NAME RATE  stop one job of a running sweep, keep the others
#   tools/device_adc.sh collect [evk|-] [ROOT]  tar /tmp/res into $OUT (evk: with bitstreams; ROOT: its
#                                        checkpoints too, in parts: tools/ckpt_parts.py)
set -euo pipefail
export PYTHONPATH=/tmp/code:/tmp/site PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export EVALKIT_CACHE=/tmp/cache EVALKIT_REQUIRE_GSPLAT=1
# a D-NeRF scene by name (under /tmp/data/dnerf) or a path to one
scene_dir() { [[ $1 == */* ]] && echo "$1" || echo "/tmp/data/dnerf/$1"; }
case "$1" in
  setup)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    rm -rf /tmp/code && mkdir -p /tmp/code /tmp/data /tmp/res
    cp -r evalkit methods datasets pyproject.toml /tmp/code/
    for d in .devdata*; do [ -d "$d" ] && cp -rn "$d"/* /tmp/data/; done; ls /tmp/data/*
    cd /tmp/code
    time python3 -c "import torch, gsplat; from gsplat.cuda._backend import _C; print('gsplat ok', torch.cuda.get_device_name())"
    time python3 -c "from evalkit.codec import arith; arith.ensure_backend(); print('torchac ok')"
    python3 -m evalkit.cli methods > /dev/null && echo "evalkit CLI ok"  # the carried wheels are complete
    ;;
  gputest)
    # tests marked gpu, against the code in /tmp/code (tests copied beside it): gputest [SECONDS] [FILE...]
    # (default: the files that hold GPU tests; collecting all would import CPU-only extras such as av)
    rm -rf /tmp/code/tests && cp -r tests /tmp/code/ && cd /tmp/code
    files=("${@:3}"); [ ${#files[@]} -gt 0 ] || files=($(grep -rl "mark.gpu" tests))
    timeout "${2:-300}" python3 -m pytest -m gpu "${files[@]}" -v -p no:cacheprovider --timeout 120 2>&1 \
      | grep -E "PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS|Error|passed|failed" | tee -a /tmp/res/gputest.txt
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
      >> /tmp/res/$name.out 2>&1 < /dev/null &  # appended: a second sweep into the same folder keeps the first one's lines
    echo "launched $name"
    ;;
  pair27)
    # issue 27 (and 26's "faster than 4dgs"): 4dgs, then 4dgs-cc high, one after the other, each alone
    # on the GPU (train time ratio, FPS): pair27 SCENE [SEED]
    sc=$2; seed=${3:-0}; mkdir -p /tmp/res/pair27; cd /tmp/code
    setsid nohup bash -c "python3 -m evalkit.cli run --method 4dgs --dataset dnerf --scene $sc --seed $seed \
      --data-root /tmp/data --out /tmp/res/pair27 --device cuda && python3 -m evalkit.cli run --method 4dgs-cc \
      --dataset dnerf --scene $sc --rate high --seed $seed --data-root /tmp/data --out /tmp/res/pair27 --device cuda" \
      > /tmp/res/pair27.out 2>&1 < /dev/null &
    echo "launched pair27 on $sc (seed $seed)"
    ;;
  jpg)
    # issue 29: --jobs-per-gpu throughput, 4dgs on four copies of lego (one scene fits the carry limit)
    for i in 2 3 4; do ln -sfn /tmp/data/dnerf/lego /tmp/data/dnerf/lego_$i; done
    cd /tmp/code
    setsid nohup python3 -m evalkit.bench.jobs_per_gpu --method 4dgs --dataset dnerf --data-root /tmp/data \
      --scene lego --scene lego_2 --scene lego_3 --scene lego_4 --gpu 0 --settings "${3:-1,2,4}" \
      --iterations "$2" --out /tmp/res/jpg > /tmp/res/jpg.out 2>&1 < /dev/null &
    echo "launched jobs-per-gpu bench"
    ;;
  synth)
    # the synthetic T-Rex-like skeleton as a D-NeRF scene, made on the device (too large to carry):
    # synth [NAME] [FRAMES] -> /tmp/data/dnerf/NAME, 800x800
    cd /tmp/code
    python3 -m evalkit.cli datasets synth "/tmp/data/dnerf/${2:-skeleton}" --scene skeleton --size 800x800 \
      --frames "${3:-150}" --workers 16
    ;;
  data)
    # later calls carry other scenes (the carry limit): add them to /tmp/data
    cp -rn "${2:-.devdata}"/* /tmp/data/ && ls /tmp/data/*
    ;;
  cc)
    # a 4dgs-cc model to time the viewer with (foreground, alone): cc ITERATIONS
    cd /tmp/code
    timeout "${3:-150}" python3 -m evalkit.cli run --method 4dgs-cc --dataset dnerf --scene lego --rate high \
      --iterations "$2" --data-root /tmp/data --out /tmp/res/cc --device cuda 2>&1 | tail -n 4 || true
    ;;
  ccstep)
    # issue 27: 4dgs-cc fine step against 4dgs's at the same Gaussian count (alone on the GPU):
    # ccstep [SCENE | PATH] [--compile] (a D-NeRF scene under /tmp/data/dnerf, or a path to one)
    cd /tmp/code; sc=$(scene_dir "${2:-lego}")
    python3 -m evalkit.bench.fourdgs_cc_step "$sc" --dataset dnerf --rate high \
      --coarse 3000 --grow-to 95000 --steps 300 --split-steps 100 --warmup 30 --device cuda "${@:3}" 2>&1 | tee -a /tmp/res/ccstep.txt
    ;;
  cckern)
    # issue 27: the NVCC rate step's kernels (eager profile) and rate timings, alone: cckern [SCENE]
    cd /tmp/code
    python3 -m evalkit.bench.fourdgs_cc /tmp/data/dnerf/"${2:-jumpingjacks}" --dataset dnerf --rate high \
      --coarse 1000 --steps 50 --reps 30 --kernels --device cuda 2>&1 | tee /tmp/res/cckern.txt
    ;;
  ssim)
    # the training image loss alone, by SSIM filter (stop 42's profile: 7.3 ms of an adc-gs step), alone
    cd /tmp/code; python3 -m evalkit.bench.ssim 2>&1 | tee -a /tmp/res/ssim.txt
    python3 -m evalkit.bench.ssim --size 800x800 --batch 1 2>&1 | tee -a /tmp/res/ssim.txt
    ;;
  adcstep)
    # issue 26: adc-gs late training step at a fixed anchor count, split by phase (alone):
    # adcstep SCENE|PATH [ANCHORS] [DATASET] (a PATH for a dataset other than dnerf; ADCSTEP_METHOD=adc-gs:unpadded
    # for a variant)
    cd /tmp/code; sc=$(scene_dir "${2:-jumpingjacks}")
    timeout "${ADCSTEP_TIMEOUT:-400}" python3 -m evalkit.bench.adc_gs_step "$sc" --dataset "${4:-dnerf}" --rate mid \
      --method "${ADCSTEP_METHOD:-adc-gs}" \
      --anchors "${3:-31000}" --steps 300 --warmup 100 --profile-steps 20 --device cuda 2>&1 | tee -a /tmp/res/adcstep.txt || true
    ;;
  variant)
    # a tuning variant in the device's copy of a spec (not committed): variant METHOD NAME KEY=VALUE...
    spec=/tmp/code/methods/$2.toml; name=$3; shift 3
    if grep -q "^\[variants\.$name\]" "$spec"; then echo "variant $name already in $spec"; exit 1; fi
    printf '\n[variants.%s]\ntitle = "tuning: %s"\n' "$name" "$*" >> "$spec"
    for kv in "$@"; do printf '%s = %s\n' "${kv%%=*}" "${kv#*=}" >> "$spec"; done
    tail -n $(( $# + 2 )) "$spec"
    ;;
  tune26)
    # issue 26 tuning on the val views, mid (quality only: the jobs share the GPU; one adc-gs job kept
    # it 29 % busy): tune26 SCENE NAME... with NAME from base, pr03, lrpos, fgrand, g004 (stop 35's review),
    # pe16, gsprim (stop 37's review), g001, g0005, t25, t10 (stop 40), or a variant of the committed spec (rd, coarse-fine, wo-ts, ...)
    sc=$2; shift 2; me=$(realpath "$0")
    settings() {
      case $1 in
        base) echo "";; pr03) echo "prune_opacity=0.03";; fgrand) echo "fg_init_std=0.05";;
        lrpos) echo "lr_position=0.00016 lr_position_final=0.0000016";; g004) echo "grow_threshold=0.004";;
        pe16) echo "pe_scale=16.0";; gsprim) echo 'grow_sigma="primitive"';;
        g001) echo "grow_threshold=0.001";; g0005) echo "grow_threshold=0.0005";;
        t25) echo "time_rows=25";; t10) echo "time_rows=10";;
        *) grep -q "^\[variants\.$1\]" /tmp/code/methods/adc-gs.toml && echo "=spec" || return 1;;
      esac
    }
    for n in "$@"; do settings "$n" > /dev/null || { echo "unknown tuning run $n: nothing launched"; exit 1; }; done
    for n in "$@"; do
      kv=$(settings "$n"); m=adc-gs
      if [ "$kv" = "=spec" ]; then m=adc-gs:$n  # a variant of the committed spec (rd, coarse-fine, wo-ts, ...)
      elif [ -n "$kv" ]; then
        grep -q "^\[variants\.$n\]" /tmp/code/methods/adc-gs.toml || bash "$me" variant adc-gs "$n" $kv
        m=adc-gs:$n
      fi
      bash "$me" launch "t_${sc}_$n" --method "$m" --dataset dnerf --scene "$sc" --rate mid --eval-split val --threads 4
    done
    ;;
  cc27)
    # issue 27 diagnostics, quality only (times contended): cc27 SCENE -> 4dgs, 4dgs-cc high and its
    # vq-early / vq-once variants, all four at once on the one GPU (background; `wait`, then `collect`)
    sc=${2:-mutant}; mkdir -p /tmp/res/cc27; cd /tmp/code
    setsid nohup python3 -m evalkit.cli run --method 4dgs --dataset dnerf --scene "$sc" --data-root /tmp/data \
      --out /tmp/res/cc27 --device cuda --threads 4 > /tmp/res/cc27_4dgs.out 2>&1 < /dev/null &
    setsid nohup python3 -m evalkit.cli run --method 4dgs-cc --method 4dgs-cc:vq-early --method 4dgs-cc:vq-once \
      --dataset dnerf --scene "$sc" --rate high --data-root /tmp/data --out /tmp/res/cc27 --gpus 0 \
      --jobs-per-gpu 3 --threads 4 > /tmp/res/cc27_cc.out 2>&1 < /dev/null &
    echo "launched cc27 on $sc"
    ;;
  queue)
    # run phases one after another in the background (timings alone first, then launches), so the
    # call returns at once: queue "adcstep mutant" "ccstep mutant --compile" "launch NAME ARGS" ...
    # (from a copy of this script: a later call replaces the working tree, and bash reads a script
    # as it runs; the queued phases use only /tmp)
    shift; cp "$0" /tmp/device_adc_queue.sh
    printf '%s\n' "$@" > /tmp/res/queue.txt
    setsid nohup bash -c 'while IFS= read -r line; do echo "== $line ($(date +%T))"; \
      eval bash /tmp/device_adc_queue.sh $line; done < /tmp/res/queue.txt; echo "== queue done ($(date +%T))"' \
      > /tmp/res/queue.out 2>&1 < /dev/null &
    echo "queued $# phases"
    ;;
  plan)
    # queue the phases listed in a committed file, one per line (# comments and blank lines skipped)
    mapfile -t lines < <(grep -v '^\s*\(#\|$\)' "$2")
    bash "$0" queue "${lines[@]}"
    ;;
  stop)
    pkill -f "evalkit" || true; sleep 2
    ;;
  resume)
    # checkpoints carried from an earlier session (ignored .devresume*/ folders laid out as /tmp/res:
    # NAME/DATASET/SCENE/METHOD/RATE.ckpt): copied in, never over a newer one here; a `launch` of the
    # same NAME and job then resumes from them (same ADCConfig, or the digest rejects them)
    # (resume DIR... for given folders only: a folder kept from an earlier call would bring back the
    # checkpoint of a job that has finished since)
    dirs=("${@:2}"); [ ${#dirs[@]} -gt 0 ] || dirs=(.devresume*)
    for d in "${dirs[@]}"; do [ -d "$d" ] && cp -rn "$d"/* /tmp/res/; done; find /tmp/res -name "*.ckpt" -printf "%p %s\n"
    ;;
  stopjob)
    # stop one job of a running sweep and keep the others: stopjob NAME RATE (SIGKILL of the worker
    # that writes its log: the sweep records a crash and goes on; a SIGINT would stop the whole sweep,
    # as Ctrl-C does: stop 44 lost its three HyperNeRF jobs that way). Its checkpoint stays.
    for p in $(pgrep -f evalkit.sweep.worker); do
      ls -l /proc/$p/fd 2>/dev/null | grep -q "/$2/.*/$3\.log" && { kill -9 "$p"; echo "killed worker $p ($2 $3)"; }
    done
    ;;
  viewer)
    # issue 31: viewer frame time of a decoded model (alone on the GPU)
    cd /tmp/code
    python3 -m evalkit.bench.viewer "$2" --data-root /tmp/data --device cuda --frames 100 | tee -a /tmp/res/viewer.txt
    ;;
  code2)
    # a later call's code beside the running jobs' (/tmp/code stays as it was)
    rm -rf /tmp/code2 && mkdir -p /tmp/code2 && cp -r evalkit methods datasets pyproject.toml /tmp/code2/
    ;;
  fps)
    # FPS of a decoded adc-gs file (alone): fps EVK SCENE_DIR; CODE=/tmp/code2 to time a later call's code
    cd "${CODE:-/tmp/code}"
    PYTHONPATH="${CODE:-/tmp/code}":/tmp/site python3 -m evalkit.bench.adc_gs "$2" "$3" | tee -a /tmp/res/adc_fps.txt
    ;;
  wait)
    # sleep up to $2 seconds or until no evalkit run is left
    end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ] && { pgrep -f "^python3 -m (evalkit.cli run|evalkit.bench.jobs_per_gpu|evalkit.sweep)" > /dev/null \
        || { [ -f /tmp/res/queue.txt ] && ! grep -qs "queue done" /tmp/res/queue.out; }; }; do sleep 10; done
    grep -h "^==\|ms per step\|ratio\|wall" /tmp/res/queue.out 2>/dev/null | tail -n 30 || true
    grep -h -E "PSNR .* bytes|FAILED" /tmp/res/*/*/*/*/*.log /tmp/res/*/*/*/*/*/*.log 2>/dev/null || true
    for f in /tmp/res/*/*/*/*/*.log /tmp/res/*/*/*/*/*/*.log; do [ -f "$f" ] && echo "$f: $(tail -n 1 "$f" | cut -c1-150)"; done 2>/dev/null | tail -n 12
    cat /tmp/res/jpg.out 2>/dev/null | tail -n 8 || true
    ;;
  collect)
    tail -n 3 /tmp/res/*.out || true
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv || true
    # `collect evk` keeps the bitstreams (small captures); checkpoints stay unless ROOT is given (below)
    ex=(--exclude='*.pt' --exclude='*.ckpt' --exclude='*.ckpt.bad'); [ "${2:-}" = evk ] || ex+=(--exclude='*.evk')
    tar czf "$OUT/res.tgz" "${ex[@]}" -C /tmp res || true
    # `collect evk|- ROOT`: also the checkpoints under ROOT (e.g. /tmp/res/cap_hyper), in parts that come
    # back; here: python tools/ckpt_parts.py join FILES_AT/ckpt .devresume_NAME, carried next session
    [ -n "${3:-}" ] && python3 tools/ckpt_parts.py split "$3" "$OUT/ckpt" || true
    ls -la "$OUT"
    ;;
esac
# (the machine goes back 30 s after a call ends, killing background jobs: chain calls with `wait`)
