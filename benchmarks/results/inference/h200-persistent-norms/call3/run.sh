export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 320 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --batches 1,16 --compile-batches 1,16 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/dec.log 2>&1; echo dec rc=$?
grep -E "^decode |tokens equal" $OUT/dec.log | head -12
grep -E "^\| 3b" $OUT/dec/*.md
timeout 170 python -m pytest -q -m gpu -p no:cacheprovider -s tests/test_gpu.py -k "persistent or frozen_model_decodes or dependent_launches or compiled" > $OUT/gpu-tests.log 2>&1; echo tests rc=$?; grep -E "passed|failed|kernels:|Error" $OUT/gpu-tests.log | tail -8
