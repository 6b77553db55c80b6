export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 150 python -m pytest -q -m gpu tests/test_gpu.py -k "dependent_launches or frozen_model_decodes" tests/ternary/ops/test_decode_ops.py -k "dependent_launches or frozen_model_decodes or relu_square" > $OUT/gpu-tests.log 2>&1; echo tests $?
tail -1 $OUT/gpu-tests.log
timeout 150 python .devrun/pdl_final.py > $OUT/pdl_final.log 2>&1; echo final $?
grep -E "equal|PDL" $OUT/pdl_final.log | grep -v Warn
