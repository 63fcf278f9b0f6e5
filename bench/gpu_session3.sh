#!/usr/bin/env bash
# Device call 3 (short): FP8 GPU test details, pretraining step with bf16 experts, compile, profile.
set -u
export PYTHONPATH=src PYTHONUNBUFFERED=1
timeout 60 python3 -m pytest -q -x --tb=short -p no:warnings tests/test_fp8_gpu.py -k "native_blockwise or linear_cuda" 2>&1 | grep -E "Error|error|passed|failed|assert" | head -20 | tee $OUT/fp8_tests.txt
timeout 230 python3 bench/bench_pretrain.py --preset small --steps 4 --variants flex,nomask,flex_compiled --hf --profile --out $OUT/bench_pretrain.json 2>&1 | grep -v -i warn | grep -E "^\||tokens_per_s|error" | tee $OUT/bench_pretrain.txt
