export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
timeout 570 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --batches 1,16 --compile-batches 1,16 --inductor-options mk3:triton.multi_kernel=3 --inductor-options mk1:triton.multi_kernel=1 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/dec.log 2>&1; echo dec rc=$?
grep -E "^decode |tokens equal|Error|error" $OUT/dec.log | head -30
grep -E "^\| 3b" $OUT/dec/*.md
