export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
python -m pytest -q -m gpu tests/ternary/ops/test_decode_ops.py -k "relu_square or gpu_tc_path" > $OUT/gpu-tests-decode-ops.log 2>&1; echo tests1 $?
python -m pytest -q -m gpu tests/model/test_decode_attention.py tests/ternary/test_inference.py tests/model/test_decode.py > $OUT/gpu-tests-attention-inference.log 2>&1; echo tests2 $?
python -m pytest -q -m gpu tests/test_gpu.py -k "decode or frozen" > $OUT/gpu-tests-gpu-decode.log 2>&1; echo tests3 $?
tail -2 $OUT/*.log
mkdir -p $OUT/att && python benchmarks/bench_decode.py --device cuda --parts attention --batches 1,16 --out-dir $OUT/att > $OUT/att.log 2>&1; echo att $?; grep attention $OUT/att.log
python .devrun/diag19.py step > $OUT/diag19.log 2>&1; echo diag $?; grep "b1 tps" $OUT/diag19.log
