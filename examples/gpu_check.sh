#!/bin/bash
# The GPU check: run from the repository root on a machine whose mlx has a GPU backend (on Linux:
# `pip install "mlx[cuda13]"`, or the mlx + mlx-cuda-13 wheels carried in). It prints the doctor,
# runs the kernel tests (the CUDA twin against the reference), times the tree masks per backend,
# benches every method greedy and at 0.7 on the embedded target, runs the greedy equality tests,
# looks for greedy divergences from `ar` and the ties behind them, and times verifies by shape.
# Results and logs go to $OUT (default ./gpu-check). BT and ET cap each bench, the equality tests
# and the divergence search in seconds. Without an installed mlx-spec it runs the checkout in place.
set -u
OUT=${OUT:-gpu-check}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "== $(date +%T) $*"; }
if ! python3 -c "import mlx_spec.cli" 2>/dev/null; then
  # the checkout in place: the installed layout puts cli/, metal/ and models/ inside mlx_spec
  for d in cli metal models; do [ -e "mlx_spec/$d" ] || ln -s "../$d" "mlx_spec/$d"; done
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
mlxspec() { python3 -c "from mlx_spec.cli.app import main; main()" "$@"; }
export -f mlxspec 2>/dev/null
python3 -c "import mlx.core as mx; print('mlx', mx.__version__, 'device', mx.default_device(),
'cuda', hasattr(mx, 'cuda') and mx.cuda.is_available(), 'metal', mx.metal.is_available())" | tee "$OUT/env.txt"
log doctor; timeout 120 bash -c 'mlxspec doctor' 2>&1 | tail -25
log kernel tests
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/kernels -o addopts="" 2>&1 | tail -15
log kernels; timeout 120 bash -c 'mlxspec kernels --json' > "$OUT/kernels.json" 2>&1
python3 -c "
import json, sys
for r in json.load(open(sys.argv[1]))['rows']:
    print(r['shape'], r['nodes'], r['backend'], r['mask_ms'], 'ms of a', r['step_ms'], 'ms step')
" "$OUT/kernels.json"
METHODS="ar,pld,lookahead,draft,adaedl,redrafter,auto"
log bench greedy
timeout "${BT:-300}" bash -c "mlxspec bench --methods $METHODS --json $OUT/bench_t0.json" 2>&1 | tail -40
log bench T=0.7
timeout "${BT:-300}" bash -c "mlxspec bench --methods $METHODS --temp 0.7 --ignore-eos --json $OUT/bench_t07.json" 2>&1 | tail -30
log greedy equality tests
timeout "${ET:-300}" python3 -m pytest -q -p no:cacheprovider tests/core/test_greedy_equality.py -o addopts="" --tb=line -rf 2>&1 | tail -20
log greedy divergences
timeout "${ET:-300}" python3 examples/greedy_divergence.py 2>&1 | tail -12
log verify times by shape
timeout 120 python3 examples/verify_shapes.py 2>&1 | tail -8
log end
