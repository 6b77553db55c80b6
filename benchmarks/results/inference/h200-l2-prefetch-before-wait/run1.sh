export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TORCHINDUCTOR_COMPILE_THREADS=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv > $OUT/smi.txt
timeout 220 python .devrun/pf/pf1.py gemv > $OUT/gemv.log 2>&1; echo gemv rc=$?
grep -v Warn $OUT/gemv.log | tail -20
timeout 330 python .devrun/pf/pf1.py default,early,pf2+early,pf4+early,pf1+early > $OUT/decode.log 2>&1; echo decode rc=$?
grep -v Warn $OUT/decode.log | tail -8
