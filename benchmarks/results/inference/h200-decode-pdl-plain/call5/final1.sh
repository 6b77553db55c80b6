export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
python .devrun/pdl_final.py > $OUT/pdl_final.log 2>&1; echo final $?
grep -E "equal|PDL" $OUT/pdl_final.log | grep -v Warn
mkdir -p $OUT/dec
timeout 400 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --batches 1,16 --compile-batches 1,16 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/decode-b1-b16.log 2>&1; echo bench $?
grep -E "^decode |built" $OUT/decode-b1-b16.log
