#!/bin/bash
# make demo's train command: old recipe vs new defaults (600 and 540 steps), interleaved, 2 rounds.
cd /work/main
PY=.venv/bin/python
D=/tmp/q/wdata
[ -f $D/meta.json ] || $PY cli.py prepare-char --out-dir $D > /dev/null
for round in 1 2; do
  order="old new600"; [ $round -eq 2 ] && order="new600 old"
  for name in $order; do
    case $name in
      old) flags="--max-iters 600 --optimizer adamw --lr 1e-3 --schedule constant";;
      new600) flags="--max-iters 600";;
      new540) flags="--max-iters 540";;
    esac
    rm -rf /tmp/q/demo_$name
    start=$(date +%s.%N)
    $PY cli.py train --model gpt-fast --data-dir $D $flags --eval-interval 200 --eval-iters 10 --ckpt-dir /tmp/q/demo_$name > /tmp/q/demo_$name.log 2>&1
    end=$(date +%s.%N)
    val=$(grep -o "best val loss [0-9.]*" /tmp/q/demo_$name.log | tail -1)
    train_s=$(tail -1 /tmp/q/demo_$name/metrics.csv | awk -F, '{print "iter " $1 ", time_sec " $10}')
    echo "round $round $name wall $(echo "$end - $start" | bc) s, $val, last metrics row: $train_s"
  done
done
