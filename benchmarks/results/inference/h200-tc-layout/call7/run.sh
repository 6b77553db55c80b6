export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
NCU="ncu --clock-control none --kernel-name regex:decode_tc_kernel --launch-skip 2 --launch-count 1 --set full --import-source no"
ncu --version | tail -1 > $OUT/ncu-version.txt
i=1
for spec in "8192 8192 tc" "8192 8192 rows" "12288 3072 tc" "3072 12288 tc" "4096 4096 tc"; do
  set -- $spec
  timeout 100 $NCU -o $OUT/p$i python benchmarks/gemv_ncu.py --K $1 --N $2 --M 1 --kernel tc --layout $3 > $OUT/p$i.log 2>&1
  timeout 60 ncu --import $OUT/p$i.ncu-rep --page details > $OUT/p$i-details.txt 2>&1
  timeout 60 ncu --import $OUT/p$i.ncu-rep --page source --csv --print-source sass > $OUT/p$i-sass.csv 2>&1
  echo "$i: $spec rc=$? $(grep -E '^ +Duration' $OUT/p$i-details.txt | head -1)"
  rm -f $OUT/p$i.ncu-rep
  i=$((i+1))
done
