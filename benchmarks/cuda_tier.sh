#!/usr/bin/env bash
# The CUDA tier of issue 14 in one go, for a session that is lent a GPU. From the
# repository root, on the GPU machine:
#
#     OUT=$OUT bash benchmarks/cuda_tier.sh [all|tests|guard|step_time|syncs]   # default: all
#
#   tests      every test marked requires_cuda (tests/cuda/: each model family trained on
#              the device through fit's compiled step, resumed, evaluated and sampled; the
#              Inductor / CUDA-graph branch, fused Adam's found_inf, no synchronisation in
#              steady-state steps, exact resume on the device, Lightning in bf16; metrics
#              on CUDA tensors), and tests/metrics' CUDA test
#   guard      benchmarks/step_time.py --guard-cost on CUDA: the in-program step guard (fused
#              Adam's found_inf) on against off, VAE and RealNVP at batch 128 / 1024
#   step_time  benchmarks/step_time.py on CUDA at batch 128 / 1024 / 8192, today's default
#              backend (auto) and Inductor, against hand-written eager PyTorch
#   syncs      benchmarks/cuda_syncs.py: host synchronisations per step, CUDA profiler
#
# Each stage's time limit is TIMEOUT seconds (default 540); pytest runs on WORKERS processes
# (default 8: Inductor compiles on the CPU, and the GPU machine has 16 cores; 8 ran the 30
# tests in 150 s on an H200).
# Results go to $OUT (the device call's folder that comes back; default runs/cuda-tier): gpu.txt, tests.txt, step_time.md, syncs.md;
# copy the tables into benchmarks/RESULTS.md with the command, GPU and date. Each stage fits
# in one 10-minute device call on an H200; run them as separate calls if time is short.
#
# The GPU machine's python3 holds torch, lightning, pytest, scikit-learn and torchdiffeq but
# not Pyro: bring pyro-ppl and pyro-api as wheels in .whl/ (ignored by git, named in the
# device call's carry), made here with
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp -d .whl pyro-ppl==1.9.2 pyro-api==0.1.2
set -uo pipefail
stage=${1:-all}
PY=${PY:-python3}
OUT=${OUT:-runs/cuda-tier}
TIMEOUT=${TIMEOUT:-540}
WORKERS=${WORKERS:-8}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
{
    date -u
    git rev-parse --short HEAD 2>/dev/null || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
    "$PY" -c "import torch, pyro; print('torch', torch.__version__, 'pyro', pyro.__version__,
'cuda', torch.cuda.is_available())"
} | tee "$OUT/gpu.txt"
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "no CUDA device: the CUDA tier needs a GPU" >&2; exit 2; }

status=0
if [[ $stage == all || $stage == tests ]]; then
    # -o addopts="": no doctests (they are the CPU suite's); -m: the CUDA tier only
    timeout "$TIMEOUT" "$PY" -m pytest -q -p no:randomly -p no:cacheprovider -o addopts="" \
        -n "$WORKERS" -m requires_cuda --durations=15 -rfE tests 2>&1 | tee "$OUT/tests.txt" || status=1
fi
if [[ $stage == all || $stage == guard ]]; then
    timeout "$TIMEOUT" "$PY" benchmarks/step_time.py --device cuda --guard-cost 30 --block 5 \
        --results "$OUT/guard.md" 2>&1 | tee "$OUT/guard.txt" || status=1
fi
if [[ $stage == all || $stage == step_time ]]; then
    timeout "$TIMEOUT" "$PY" benchmarks/step_time.py --device cuda --batch-sizes 128 1024 8192 \
        --backends auto inductor --steps 50 --results "$OUT/step_time.md" 2>&1 \
        | tee "$OUT/step_time.txt" || status=1
fi
if [[ $stage == all || $stage == syncs ]]; then
    timeout "$TIMEOUT" "$PY" benchmarks/cuda_syncs.py --steps 20 2>&1 | tee "$OUT/syncs.md" || status=1
fi
exit $status
