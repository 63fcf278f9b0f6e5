#!/usr/bin/env bash
# Device call 2: GPU tests, pretraining throughput/MFU/profile, generation, packing. Results under $OUT.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 -m pytest -q tests/test_model_gpu.py tests/test_fp8_gpu.py 2>&1 | tail -15 | tee $OUT/gpu_tests.txt
timeout 280 python3 bench/bench_pretrain.py --preset small --steps 5 --hf --profile --out $OUT/bench_pretrain.json 2>&1 | grep -v -i warn | tail -60 | tee $OUT/bench_pretrain.txt
timeout 150 python3 bench/bench_model.py --preset small --hf-experts grouped_mm --iters 3 --out $OUT/bench_model.json 2>&1 | grep -v -i warn | tail -14 | tee $OUT/bench_model.txt
timeout 60 python3 bench/bench_packing.py --device cuda --json $OUT/bench_packing.json 2>&1 | tail -12 | tee $OUT/bench_packing.txt
