set -x
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 250 python -m pytest -q -m gpu -p no:cacheprovider tests/ternary/ops/test_decode_ops.py -k "tc_layout or tc_path or relu_square" > $OUT/gpu-tests-ops.log 2>&1; echo rc=$? >> $OUT/gpu-tests-ops.log
tail -3 $OUT/gpu-tests-ops.log
timeout 200 python benchmarks/bench_decode.py --device cuda --parts gemv --gemv-shapes 4096:4096,8192:8192,3072:12288,12288:3072,3072:3072,6144:3072 --gemv-m 1,4,16 --out-dir $OUT/gemv > $OUT/gemv.log 2>&1; echo rc=$?
grep -E "^\| gemv" $OUT/gemv/*.md
