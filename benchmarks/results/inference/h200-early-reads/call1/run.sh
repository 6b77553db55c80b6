export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 175 python .devrun/at/ab.py > $OUT/ab.log 2>&1; echo ab rc=$?
grep -E "^(ternary|dense) " $OUT/ab.log
timeout 110 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py -k "append or frozen_model_decodes or dependent_launches or graphed_decode or cuda_graph_decode" > $OUT/gpu-tests.log 2>&1; echo tests rc=$?; grep -E "passed|failed|Error" $OUT/gpu-tests.log | tail -5
