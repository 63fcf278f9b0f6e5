#!/usr/bin/env bash
# One device call: GPU tests, then the model and FP8 benchmarks. Results under $OUT.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
python3 -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
python3 -m pytest -q -x tests/test_model_gpu.py tests/test_fp8_gpu.py 2>&1 | tail -25 | tee $OUT/gpu_tests.txt
timeout 300 python3 bench/bench_model.py --preset small --out $OUT/bench_model.json 2>&1 | grep -v Warning | tail -20 | tee $OUT/bench_model.txt
timeout 200 python3 bench/bench_fp8.py --out $OUT/bench_fp8.json 2>&1 | tail -40 | tee $OUT/bench_fp8.txt
