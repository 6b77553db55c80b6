export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
mkdir -p $OUT/gemv
timeout 170 python -m pytest -q -m gpu tests/test_gpu.py -k "dependent_launches or frozen_model_decodes" tests/ternary/ops/test_decode_ops.py -k "dependent_launches or frozen_model_decodes or relu_square" > $OUT/gpu-tests.log 2>&1; echo tests $?
tail -2 $OUT/gpu-tests.log
timeout 330 python benchmarks/bench_decode.py --device cuda --parts gemv --gemv-shapes 4096:4096,8192:8192,3072:12288,12288:3072,3072:3072,6144:3072 --gemv-m 1,4,16 --out-dir $OUT/gemv > $OUT/gemv.log 2>&1; echo gemv $?
grep -c "gemv_m" $OUT/gemv.log
