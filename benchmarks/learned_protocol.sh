#!/usr/bin/env bash
# Every comparison under benchmarks/learned_protocol.yaml, in order. Each is resumable (finished runs are
# reused), so run this again in a later session to go on where it stopped; commit the folders as they fill:
#   .venv/bin/python benchmarks/stage_runs.py benchmarks/results/*_learned benchmarks/results/learned_protocol* && git commit
#   bash benchmarks/learned_protocol.sh            # about 10+ hours on 2 cores in all
set -euo pipefail
cd "$(dirname "$0")/.."
F=.venv/bin/fedmas
P=benchmarks/learned_protocol.yaml
R=benchmarks/results
TEN=0,1,2,3,4,5,6,7,8,9
# 1. the split phase first (it decides a default): MAS-2 and MAS-3 with the reference's restarted schedule,
#    then the same runs with the groups continuing the merged model's schedule, paired by seed
$F compare $P --seeds $TEN --jobs 2 --out $R/learned_protocol --methods mas:2,mas:3
$F compare $P --seeds $TEN --jobs 2 --out $R/learned_protocol_continue --methods mas:2,mas:3 \
  --set mas.split_schedule=continue
# 2. the comparison: 10 seeds of six methods (the MAS runs of 1. are reused)
$F compare $P --seeds $TEN --jobs 2 --out $R/learned_protocol --methods mas:2,mas:3,one-by-one,all-in-one,tag:2,random:2
# 3. HOA on 3 seeds (its 15 full-length probes make it the most expensive method; finished, so reused)
$F compare $P --seeds 0,1,2 --jobs 1 --set threads=1 --out $R/learned_protocol_hoa --methods hoa:2
# 4. partial labels and a task arriving mid-training (5 seeds each), side by side, one process and one torch
#    thread each, as in 2.
.venv/bin/python benchmarks/partial_labels.py --config $P --seeds 0,1,2,3,4 --jobs 1 --set threads=1 --out $R/partial_labels_learned \
  --reuse $R/learned_protocol &  # coverage 1.0 is the comparison of 2.: its runs are reused
LABELS=$!
.venv/bin/python benchmarks/arrivals.py --config $P --seeds 0,1,2,3,4 --jobs 1 --set threads=1 \
  --out $R/arrivals_learned
wait $LABELS
# 5. Groups that matter: the ground truth for grouping (every subset trained; seeds 0-2; resumable)
.venv/bin/python benchmarks/grouping_truth.py run --seeds 0,1,2 --jobs 2
.venv/bin/python benchmarks/grouping_truth.py table --seeds 0,1,2
.venv/bin/python benchmarks/grouping_signals.py --seeds 0,1,2
.venv/bin/python benchmarks/grouping_signals.py --seeds 0,1,2 --truth scratch --out grouping_signals_scratch
.venv/bin/python benchmarks/grouping_figure.py
#    the preregistered default (validation data of seeds 0-2 only; committed before any run of the next step)
.venv/bin/python benchmarks/grouping_choice.py --seeds 0,1,2
#    its confirmation on fresh seeds 10-19 (run it from the preregistration commit), then the table
.venv/bin/python benchmarks/grouping_confirm.py run --jobs 2
.venv/bin/python benchmarks/grouping_confirm.py table
#    when to split: R0 in {0.1, 0.3, 0.5} R with the best and the chosen partition, and merge_rounds: auto
.venv/bin/python benchmarks/grouping_split_time.py run --seeds 0 --jobs 2
.venv/bin/python benchmarks/grouping_split_time.py table --seeds 0
# 6. PCGrad and FAMO as all-in-one weightings, the same 10 seeds as 2. (reported beside it, paired by seed)
$F compare $P --seeds $TEN --jobs 2 --out $R/learned_protocol_weightings --methods all-in-one-pcgrad,all-in-one-famo
.venv/bin/python benchmarks/weightings_learned.py
