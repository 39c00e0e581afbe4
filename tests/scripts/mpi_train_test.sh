#!/usr/bin/env bash
# Data-parallel training under mpirun on one machine (docs/distributed.md).
#   mpi_train_test.sh NORMLAB equivalence  K = 2, 3 (uneven shards) equal one process:
#                                          with --sync-bn the whole checkpoint (weights,
#                                          running statistics, optimizer state, loss),
#                                          through the sharded optimizer (the default) and,
#                                          K = 3, the unsharded one; K = 2 with the ring
#                                          transport forced (shared memory is the default
#                                          on one node);
#                                          without it the weights of one process running
#                                          per-shard BatchNorm (Ghost BN, one ghost a shard)
#   mpi_train_test.sh NORMLAB fault        a rank SIGKILLed mid-run: the job ends non-zero
#                                          within seconds, the last checkpoint is intact, and
#                                          --resume from it (with 3 ranks) ends where an
#                                          uninterrupted run ends; a NaN in one rank's shard
#                                          with --on-nonfinite skip: skipped as in one process
#   mpi_train_test.sh NORMLAB syncfamily   --sync-bn with batchnorm2d and Batch Renorm: K = 2, 3
#                                          equal one process; with Ghost BN a clear error
#   mpi_train_test.sh NORMLAB study        mpirun -np 2 normlab study: runs split over the
#                                          ranks, rank 0 reports once and writes the cache
#   mpi_train_test.sh NORMLAB badinput     more ranks than a batch has samples; one rank
#                                          that cannot read the data; bad flags (overlap with
#                                          sharding, --mpi-transport, --model, an optimizer
#                                          option): an error from every rank, non-zero exit,
#                                          no hang, no MPI_Abort for what every rank sees
# Exit 77 (skipped, with the reason): no mpirun, a build without MPI, or no MNIST.
set -uo pipefail
normlab="$1"
mode="$2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
mnist="${NORMLAB_TEST_MNIST:-$repo/../shared/data/mnist}"
compare="python3 $repo/tests/scripts/compare_safetensors.py"
command -v mpirun >/dev/null || { echo "SKIP: mpirun not found (Debian: openmpi-bin)"; exit 77; }
"$normlab" --version | grep -q "mpi: yes" || { echo "SKIP: normlab was built without MPI"; exit 77; }
[[ -f "$mnist/train-images-idx3-ubyte.gz" || -f "$mnist/train-images-idx3-ubyte" ]] ||
  { echo "SKIP: MNIST not found at $mnist"; exit 77; }
# Open MPI refuses root without these; more ranks than cores need --oversubscribe.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
# Under scripts/test-sanitizers: Open MPI's own start-up allocations are never
# freed (not normlab's); leak checking stays on for every other test.
[[ -n "${ASAN_OPTIONS:-}" ]] && export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
mpi() { local k="$1"; shift; timeout 120 mpirun --oversubscribe -np "$k" "$@"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fails=0
check() {  # check WHAT COMMAND...: runs it, reports
  local what="$1"; shift
  if "$@" >"$work/check.log" 2>&1; then echo "ok: $what"; sed 's/^/    /' "$work/check.log"
  else echo "FAIL: $what"; sed 's/^/    /' "$work/check.log"; fails=$((fails + 1)); fi
}

spec="flatten, linear(64), relu, bn, linear(32), relu, ln, linear(10)"
# 1024 samples = 16 batches of 64 a epoch, 32 SGD steps (momentum: every step's gradient counts).
common=(train --data "$mnist" --epochs 2 --limit-test 1000 --seed 3
        --batch-size 64 --optimizer sgd --lr 0.1 --momentum 0.9 --threads 1 --progress never)
tol=(--rtol 5e-3 --atol 1e-4)
[[ $mode == badinput ]] || common+=(--limit-train 1024)

case "$mode" in
equivalence)
  "$normlab" "${common[@]}" --model "$spec" --out "$work/one" >/dev/null || exit 1
  for k in 2 3; do
    mpi "$k" "$normlab" "${common[@]}" --model "$spec" --sync-bn --out "$work/sync$k" \
      >"$work/sync$k.log" 2>&1 || { cat "$work/sync$k.log"; exit 1; }
    check "$k ranks --sync-bn: checkpoint (weights, running stats, momentum buffers) = 1 process" \
      $compare "$work/sync$k/checkpoint.safetensors" "$work/one/checkpoint.safetensors" "${tol[@]}"
    # The loss of every epoch (metrics.jsonl), as printed: the global batch's.
    check "$k ranks --sync-bn: train and test loss of every epoch = 1 process" python3 - \
      "$work/sync$k/metrics.jsonl" "$work/one/metrics.jsonl" <<'PY'
import json, sys
a = [json.loads(l) for l in open(sys.argv[1])]
b = [json.loads(l) for l in open(sys.argv[2])]
for x, y in zip(a, b):
    for k in ("train_loss", "test_loss", "train_accuracy", "test_accuracy"):
        print(k, x[k], y[k])
        assert abs(x[k] - y[k]) <= 1e-3 * max(1, abs(y[k])), k
assert len(a) == len(b) == 2
PY
    [[ $(grep -c "^epoch" "$work/sync$k.log") == 2 ]] || { echo "FAIL: only rank 0 should print (got:)"; cat "$work/sync$k.log"; fails=$((fails + 1)); }
  done
  # Rank 0 says how the run is spread (once): ranks, sharding, transport.
  grep -q "^data parallel: 2 MPI ranks, sharded optimizer (ZeRO stage 1.*; transport: shared memory (one node)$" "$work/sync2.log" &&
    [[ $(grep -c "^data parallel:" "$work/sync2.log") == 1 ]] && echo "ok: rank 0 names 2 ranks, the sharded optimizer, shared memory" ||
    { echo "FAIL: the 'data parallel:' line of rank 0"; cat "$work/sync2.log"; fails=$((fails + 1)); }
  # The ring transport forced on one node (the path across nodes): the same checkpoint.
  mpi 2 "$normlab" "${common[@]}" --model "$spec" --sync-bn --mpi-transport ring --out "$work/ring2" \
    >"$work/ring2.log" 2>&1 || { cat "$work/ring2.log"; exit 1; }
  grep -q "^data parallel: 2 MPI ranks, sharded .*; transport: ring (MPI_Sendrecv)$" "$work/ring2.log" ||
    { echo "FAIL: the ring run's 'data parallel:' line"; cat "$work/ring2.log"; fails=$((fails + 1)); }
  check "2 ranks --sync-bn --mpi-transport ring: checkpoint = 1 process" \
    $compare "$work/ring2/checkpoint.safetensors" "$work/one/checkpoint.safetensors" "${tol[@]}"
  # The unsharded optimizer (--no-shard-optimizer: the gradients all-reduced,
  # every rank updates all parameters) ends there too; above, the default
  # sharded one (ZeRO stage 1: each rank steps and keeps the state of its slice,
  # rank 0 writes the gathered state).
  mpi 3 "$normlab" "${common[@]}" --model "$spec" --sync-bn --no-shard-optimizer --out "$work/unsharded3" \
    >"$work/unsharded3.log" 2>&1 || { cat "$work/unsharded3.log"; exit 1; }
  grep -q "^data parallel: 3 MPI ranks, optimizer not sharded (gradients all-reduced); transport: shared memory (one node)$" "$work/unsharded3.log" ||
    { echo "FAIL: the unsharded run's 'data parallel:' line"; cat "$work/unsharded3.log"; fails=$((fails + 1)); }
  check "3 ranks --sync-bn --no-shard-optimizer: checkpoint = 1 process" \
    $compare "$work/unsharded3/checkpoint.safetensors" "$work/one/checkpoint.safetensors" "${tol[@]}"
  # Without --sync-bn each rank normalizes with its own 32 samples: one process
  # with Ghost BatchNorm over virtual batches of 32 computes the same weights
  # (running statistics differ: the files hold rank 0's).
  "$normlab" "${common[@]}" --model "${spec/bn/gbn(virtual_batch_size=32)}" --out "$work/ghost" >/dev/null || exit 1
  mpi 2 "$normlab" "${common[@]}" --model "$spec" --out "$work/plain2" >/dev/null 2>&1 || exit 1
  check "2 ranks, per-rank BatchNorm: weights = 1 process with per-shard (ghost) BatchNorm" \
    $compare "$work/plain2/checkpoint.safetensors" "$work/ghost/checkpoint.safetensors" \
    "${tol[@]}" --keys '(weight|bias)$'
  # A model that learns: MNIST accuracy far above chance (10 %) after 32 steps on 2 ranks.
  check "2 ranks learn MNIST (test accuracy > 0.6)" python3 -c "
import json, sys; m = [json.loads(l) for l in open('$work/plain2/metrics.jsonl')][-1]
print('test accuracy', m['test_accuracy']); sys.exit(0 if m['test_accuracy'] > 0.6 else 1)"
  ;;
fault)
  "$normlab" "${common[@]}" --model "$spec" --sync-bn --out "$work/whole" >/dev/null || exit 1
  # Rank 1 vanishes before step 25; checkpoints every 10 steps (the last good one: step 20).
  start=$SECONDS
  NORMLAB_DEBUG_KILL_AT=25:1 mpi 2 "$normlab" "${common[@]}" --model "$spec" --sync-bn \
    --checkpoint-every 10 --out "$work/killed" >"$work/killed.log" 2>&1
  rc=$?
  took=$((SECONDS - start))
  sed 's/^/    | /' "$work/killed.log" | tail -12
  if [[ $rc == 0 || $rc == 124 ]]; then echo "FAIL: the job should fail on its own (exit $rc)"; fails=$((fails + 1));
  else echo "ok: the job ended with exit $rc after $took s"; fi
  [[ $took -le 30 ]] || { echo "FAIL: took $took s to stop"; fails=$((fails + 1)); }
  check "the checkpoint left behind is intact, at step 20" python3 - "$work/killed/checkpoint.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
end = max(v["data_offsets"][1] for k, v in h.items() if k != "__metadata__")
assert 8 + n + end == len(raw), "truncated"
print("step", h["__metadata__"]["step"])
assert h["__metadata__"]["step"] == "20"
PY
  ls "$work/killed" | grep -q tmp && { echo "FAIL: a temporary was left"; fails=$((fails + 1)); }
  mpi 3 "$normlab" train --resume "$work/killed/checkpoint.safetensors" --data "$mnist" --threads 1 \
    --progress never --out "$work/killed" >"$work/resume.log" 2>&1 || { cat "$work/resume.log"; exit 1; }
  check "--resume with 3 ranks ends with the weights of the uninterrupted run" \
    $compare "$work/killed/checkpoint.safetensors" "$work/whole/checkpoint.safetensors" "${tol[@]}"
  # A NaN in rank 0's shard of batch 5 with --on-nonfinite skip: every rank
  # skips that step (the sharded step agrees on it after backward) and the run
  # ends with the checkpoint of one process skipping the same batch.
  one_epoch=("${common[@]}")
  one_epoch[4]=1
  NORMLAB_FAULT_BATCHES=5 "$normlab" "${one_epoch[@]}" --model "$spec" --sync-bn --on-nonfinite skip \
    --out "$work/skip1" >/dev/null 2>&1 || exit 1
  NORMLAB_FAULT_BATCHES=5 mpi 2 "$normlab" "${one_epoch[@]}" --model "$spec" --sync-bn --on-nonfinite skip \
    --out "$work/skip2" >"$work/skip2.log" 2>&1 || { cat "$work/skip2.log"; exit 1; }
  grep -q "warning: skipped step 5: training step 5: the input batch holds nan at row 0, column 0 of rank 0's shard" "$work/skip2.log" ||
    { echo "FAIL: rank 0 did not report the skipped step"; cat "$work/skip2.log"; fails=$((fails + 1)); }
  check "2 ranks skip the NaN step of one rank's shard as one process does (same checkpoint)" \
    $compare "$work/skip2/checkpoint.safetensors" "$work/skip1/checkpoint.safetensors" "${tol[@]}"
  ;;
badinput)
  mpi 3 "$normlab" "${common[@]}" --model "$spec" --limit-train 130 --out "$work/b1" >"$work/b1.log" 2>&1
  rc=$?
  cat "$work/b1.log"
  n=$(grep -o "3 ranks need at least one sample each from every batch, but --batch-size 64 over 130 training samples gives a batch of 2" "$work/b1.log" | wc -l)
  [[ $rc != 0 && $rc != 124 && $n == 3 ]] && echo "ok: more ranks than the last batch's samples: exit $rc, the error from all 3 ranks" ||
    { echo "FAIL: exit $rc, $n of 3 ranks said why"; fails=$((fails + 1)); }
  # MPMD: rank 1 gets a data directory that does not exist.
  timeout 120 mpirun --oversubscribe -np 1 "$normlab" "${common[@]}" --limit-train 1024 --model "$spec" --out "$work/b2" : \
    -np 1 "$normlab" "${common[@]/$mnist/$work/nowhere}" --limit-train 1024 --model "$spec" --out "$work/b2" >"$work/b2.log" 2>&1
  rc=$?
  cat "$work/b2.log"
  # Counted per occurrence, not per line: two ranks' messages can share a line.
  n=$(grep -oF "rank 1 of 2: " "$work/b2.log" | wc -l)
  grep -q "rank 1 of 2: .*nowhere" "$work/b2.log" || n=0
  [[ $rc != 0 && $rc != 124 && $n == 2 ]] && echo "ok: a rank that cannot read the data: exit $rc, both ranks name rank 1" ||
    { echo "FAIL: exit $rc, $n of 2 ranks named rank 1"; fails=$((fails + 1)); }
  [[ -e "$work/b2" ]] && { echo "FAIL: a refused run created its --out"; fails=$((fails + 1)); }
  # The overlapped all-reduce belongs to the unsharded optimizer: asked for with
  # the (default) sharded one, every rank refuses before anything is written.
  NORMLAB_ALLREDUCE_BUCKET_BYTES=4096 mpi 2 "$normlab" "${common[@]}" --limit-train 1024 --model "$spec" \
    --out "$work/b3" >"$work/b3.log" 2>&1
  rc=$?
  cat "$work/b3.log"
  n=$(grep -o "NORMLAB_ALLREDUCE_BUCKET_BYTES=4096 overlaps the gradient all-reduce, which the sharded optimizer replaces" "$work/b3.log" | wc -l)
  [[ $rc == 2 && $n == 2 && ! -e "$work/b3" ]] && echo "ok: overlap with the sharded optimizer: exit 2, both ranks say why" ||
    { echo "FAIL: exit $rc, $n of 2 ranks said why"; fails=$((fails + 1)); }
  # A transport that does not exist: every rank refuses it alike (exit 2).
  mpi 2 "$normlab" "${common[@]}" --limit-train 1024 --model "$spec" --mpi-transport tcp \
    --out "$work/b4" >"$work/b4.log" 2>&1
  rc=$?
  cat "$work/b4.log"
  n=$(grep -o -- "--mpi-transport must be auto, ring or shm, got 'tcp'" "$work/b4.log" | wc -l)
  [[ $rc == 2 && $n == 2 && ! -e "$work/b4" ]] && echo "ok: --mpi-transport tcp: exit 2, both ranks say why" ||
    { echo "FAIL: exit $rc, $n of 2 ranks said why"; fails=$((fails + 1)); }
  # A bad model spec and a bad optimizer option: every rank parses the same
  # flags, so every rank says why and nobody calls MPI_Abort.
  mpi 2 "$normlab" "${common[@]}" --limit-train 1024 --model "flatten, bogus(3), linear(10)" \
    --out "$work/b5" >"$work/b5.log" 2>&1
  rc=$?
  mpi 2 "$normlab" "${common[@]}" --limit-train 1024 --model "$spec" --weight-decay -1 \
    --out "$work/b5" >>"$work/b5.log" 2>&1
  rc2=$?
  cat "$work/b5.log"
  n=$(grep -o -- "--model: model spec, column 10: unknown layer 'bogus'" "$work/b5.log" | wc -l)
  n2=$(grep -o "option weight_decay=-1 must be >= 0" "$work/b5.log" | wc -l)
  [[ $rc == 2 && $rc2 == 2 && $n == 2 && $n2 == 2 && ! -e "$work/b5" ]] &&
    ! grep -q "MPI_ABORT" "$work/b5.log" &&
    echo "ok: a bad --model and --weight-decay: exit 2, both ranks say why, no MPI_Abort" ||
    { echo "FAIL: exit $rc/$rc2, $n and $n2 of 2 ranks said why (or MPI_ABORT)"; fails=$((fails + 1)); }
  ;;
syncfamily)
  # --sync-bn beyond batchnorm (issue 13, part 2): batchnorm2d (a small CNN)
  # and Batch Renorm (r and d from the global statistics) over K = 2 and 3
  # uneven shards end with the one-process checkpoint (one epoch: 16 steps);
  # Ghost BN is refused.
  fam=("${common[@]}")
  [[ ${fam[3]} == --epochs ]] && fam[4]=1
  for spec2 in "unflatten(1, 28, 28), conv2d(4, 5, stride=4), bn2d, relu, flatten, linear(10)" \
               "flatten, linear(64), relu, brn(rmax=1.5, dmax=0.5), linear(32), relu, linear(10)"; do
    name="${spec2//[^a-z0-9]/}"
    "$normlab" "${fam[@]}" --model "$spec2" --out "$work/one$name" >/dev/null || exit 1
    for k in 2 3; do
      # K = 3 with 1 KiB buckets: many overlapped all-reduces between SyncBatchNorm's own
      # collectives in backward (the trainer's bucketing, docs/distributed.md).
      # (The overlap is the unsharded optimizer's: --no-shard-optimizer with it; K = 2 sharded.)
      if [[ $k == 3 ]]; then export NORMLAB_ALLREDUCE_BUCKET_BYTES=1024; path=(--no-shard-optimizer)
      else unset NORMLAB_ALLREDUCE_BUCKET_BYTES; path=(); fi
      mpi "$k" "$normlab" "${fam[@]}" --model "$spec2" --sync-bn "${path[@]}" --out "$work/sync$k$name" \
        >"$work/sync$k.log" 2>&1 || { cat "$work/sync$k.log"; exit 1; }
      check "$k ranks --sync-bn, $spec2: checkpoint = 1 process" \
        $compare "$work/sync$k$name/checkpoint.safetensors" "$work/one$name/checkpoint.safetensors" "${tol[@]}"
    done
  done
  unset NORMLAB_ALLREDUCE_BUCKET_BYTES
  mpi 2 "$normlab" "${fam[@]}" --model "flatten, linear(16), gbn(virtual_batch_size=16), linear(10)" \
    --sync-bn --out "$work/g" >"$work/g.log" 2>&1
  rc=$?
  n=$(grep -o "column 22: gbn(virtual_batch_size=16): Ghost BatchNorm" "$work/g.log" | wc -l)
  [[ $rc == 2 && $n == 2 ]] && echo "ok: --sync-bn with Ghost BN: exit 2, both ranks say why" ||
    { echo "FAIL: exit $rc, $n of 2 ranks said why"; cat "$work/g.log"; fails=$((fails + 1)); }
  ;;
study)
  # mpirun -np 2 normlab study: the runs split over the ranks, rank 0 reports
  # (once) and writes the cache, which a one-process rerun then reuses whole.
  start=$SECONDS
  mpi 2 "$normlab" study bn-paper --quick --threads 1 --progress never --data "$mnist" \
    --out "$work/st" >"$work/st.log" 2>&1 || { cat "$work/st.log"; exit 1; }
  cat "$work/st.log"
  echo "took $((SECONDS - start)) s"
  [[ $(grep -c "^Verdicts:" "$work/st.log") == 1 ]] && grep -q "2 runs over 2 ranks" "$work/st.log" &&
    grep -q "higher final test accuracy: yes" "$work/st.log" && [[ -f "$work/st/report.html" ]] &&
    echo "ok: 2 ranks ran the study, rank 0 reported once" ||
    { echo "FAIL: the 2-rank study's report"; fails=$((fails + 1)); }
  "$normlab" study bn-paper --quick --threads 1 --progress never --data "$mnist" --out "$work/st" \
    >"$work/st2.log" 2>&1 || { cat "$work/st2.log"; exit 1; }
  grep -q "2 of 2 runs already done" "$work/st2.log" && echo "ok: a one-process rerun reuses both runs" ||
    { echo "FAIL: the rerun did not reuse the cache"; cat "$work/st2.log"; fails=$((fails + 1)); }
  ;;
*) echo "unknown mode $mode"; exit 2 ;;
esac
[[ $fails == 0 ]] && echo "PASS" || { echo "$fails check(s) failed"; exit 1; }
