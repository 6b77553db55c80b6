export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 150 python .devrun/c4/sweep3.py > $OUT/sweep3.log 2>&1; echo sweep rc=$?; grep -v Warn $OUT/sweep3.log
timeout 220 python -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/ternary/ops/test_decode_ops.py -k "not tc_path_matches" > $OUT/gpu-tests2.log 2>&1; echo tests rc=$?; tail -3 $OUT/gpu-tests2.log
