export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 300 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --batches 1,16 --compile-batches 1,16 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/dec.log 2>&1; echo dec rc=$?
grep -E "^\| 3b" $OUT/dec/*.md
timeout 120 python .devrun/c3/sweep2.py > $OUT/sweep2.log 2>&1; echo sweep rc=$?; cat $OUT/sweep2.log | grep -v Warn
timeout 150 python -m pytest -q -m gpu -p no:cacheprovider tests/ternary/ops/test_decode_ops.py -k "tc_layout" tests/test_gpu.py -k "tc_layout or frozen or dependent or graph_decode" > $OUT/gpu-tests.log 2>&1; echo tests rc=$?; tail -3 $OUT/gpu-tests.log
