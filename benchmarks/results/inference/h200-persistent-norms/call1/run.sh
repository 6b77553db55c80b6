export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
python -c "import torch._inductor.config as c; print('multi_kernel' , c.triton.multi_kernel)"
timeout 560 python benchmarks/bench_decode.py --device cuda --parts decode --fuse --models ternary-fused,dense-fused --batches 1 --compile-batches 1 --inductor-options mk2:triton.multi_kernel=2 --inductor-options mk1:triton.multi_kernel=1 --no-profile --profile-fast --out-dir $OUT/dec > $OUT/dec.log 2>&1; echo dec rc=$?
grep -E "^decode |tokens equal|Error|error" $OUT/dec.log | head -30
grep -E "^\| 3b" $OUT/dec/*.md
