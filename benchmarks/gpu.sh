#!/usr/bin/env bash
# The checks that need a GPU, in one go (about 10 minutes on one data-centre GPU): the CUDA tests (every
# architecture, dynamics and observable gives on cuda the cube it gives on the CPU), then the engine's benchmark
# on cuda (throughput by width, the 16-seed ensembles at alpha_tilde = 2^-8 and 2^20 to convergence, the cnn).
# Needs dlphase installed with a CUDA build of torch; PYTHON names the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$py" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name())"
"$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py
"$py" benchmarks/train.py --device cuda --widths 100,300,1000 --converge --fidelity 0
"$py" benchmarks/train.py --device cuda --cnn --cnn-seconds 60,120
