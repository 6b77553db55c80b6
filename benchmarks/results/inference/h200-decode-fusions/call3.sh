export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
mkdir -p $OUT/dec
timeout 430 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --inductor-pdl --batches 1,16 --compile-batches 1,16 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/decode-b1-b16.log 2>&1; echo bench $?
grep -E "^decode |built" $OUT/decode-b1-b16.log
timeout 140 python -m pytest -q -m gpu tests/test_gpu.py -k "append or graphed_decode or cuda_graph_decode" > $OUT/gpu-tests-append-decode.log 2>&1; echo tests $?
tail -1 $OUT/gpu-tests-append-decode.log
