#!/usr/bin/env bash
# Data-parallel speed (docs/distributed.md), all in one invocation so that the
# ratios are fair on a busy machine:
#   1 process x 2 threads   vs   mpirun -np 2 x 1 thread   on one seed001 epoch
#   and the cost of --sync-bn per step (2 ranks, with and without it), and the
#   2 ranks with the gradient all-reduce overlapped with backward
#   (NORMLAB_ALLREDUCE_BUCKET_BYTES=1048576; off by default), and the sharded
#   optimizer (the default under mpirun) against the unsharded one
#   (--no-shard-optimizer: gradients all-reduced, every rank updates all), and
#   the shared-memory transport (the default on one node) against the rings
#   of MPI_Sendrecv (--mpi-transport ring; issue 13, part 4).
# Usage: bench/mpi_speed.sh [BUILD_DIR] [LIMIT_TRAIN] [ROUNDS]
#   (default build, 60000 = a whole epoch, 1 round). With ROUNDS > 1 the whole
#   sequence runs ROUNDS times, interleaved, and every figure is the median
#   over the rounds: a noisy machine slows one run, not one configuration.
# Ranks yield the CPU while they wait (mpi_yield_when_idle): on a machine with
# no idle core a spinning rank would steal the time of the one it waits for.
# Prints the train seconds of each run (normlab's own epoch timer, without
# evaluation or start-up), samples/s and the ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
build="${1:-build}"
limit="${2:-60000}"
rounds="${3:-1}"
mnist="${NORMLAB_TEST_MNIST:-../shared/data/mnist}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
args=(train --model seed001 --epochs 1 --data "$mnist" --limit-train "$limit" --limit-test 1000
      --progress never)
seconds() { python3 -c "import json; print(json.loads(open('$1/metrics.jsonl').readline())['train_seconds'])"; }
steps=$(( (limit + 127) / 128 ))
run() {  # run NAME COMMAND...
  local name="$1"; shift
  "$@" --out "$work/$name" >/dev/null 2>"$work/$name.err" || { cat "$work/$name.err"; exit 1; }
  local s; s=$(seconds "$work/$name")
  rm -rf "${work:?}/$name"
  printf "%-34s %8.2f s  %8.0f samples/s  %7.3f ms/step\n" "$name" "$s" \
    "$(python3 -c "print($limit / $s)")" "$(python3 -c "print(1000 * $s / $steps)")"
  echo "$s" >>"$work/$name.s"
}
mpi=(mpirun --oversubscribe --bind-to none --mca mpi_yield_when_idle 1 -np 2 "$build/normlab" "${args[@]}" --threads 1)
echo "seed001, $limit samples ($steps steps of 128), $(nproc) cores, $rounds round(s)"
for ((round = 1; round <= rounds; ++round)); do
  ((rounds > 1)) && echo "round $round of $rounds"
  run "1 process x 2 threads" "$build/normlab" "${args[@]}" --threads 2
  run "2 ranks x 1 thread" "${mpi[@]}"
  run "2 ranks x 1 thread, ring" "${mpi[@]}" --mpi-transport ring
  run "2 ranks x 1 thread, unsharded" "${mpi[@]}" --no-shard-optimizer
  run "2 ranks x 1 thread, overlap 1 MiB" env NORMLAB_ALLREDUCE_BUCKET_BYTES=1048576 "${mpi[@]}" --no-shard-optimizer
  run "2 ranks x 1 thread --sync-bn" "${mpi[@]}" --sync-bn
  run "1 process x 1 thread" "$build/normlab" "${args[@]}" --threads 1
done
python3 - "$work" "$steps" <<'PY'
import statistics, sys
w, steps = sys.argv[1], int(sys.argv[2])
t = lambda n: statistics.median(float(v) for v in open(f"{w}/{n}.s").read().split())
one2, two, ring, plain, over, sync, one1 = (t(n) for n in (
    "1 process x 2 threads", "2 ranks x 1 thread", "2 ranks x 1 thread, ring", "2 ranks x 1 thread, unsharded",
    "2 ranks x 1 thread, overlap 1 MiB", "2 ranks x 1 thread --sync-bn", "1 process x 1 thread"))
if len(open(f"{w}/1 process x 2 threads.s").read().split()) > 1:
    print("medians over the rounds, ms per step: " + ", ".join(
        f"{n} {1000 * t(n) / steps:.3f}" for n in ("1 process x 2 threads", "2 ranks x 1 thread",
                                                    "2 ranks x 1 thread, ring", "1 process x 1 thread")))
print(f"2 ranks x 1 thread: {100 * one2 / two:.1f} % of 1 process x 2 threads' throughput (target >= 90 %)")
print(f"  ring transport (--mpi-transport ring): {100 * one2 / ring:.1f} %; "
      f"shared memory saves {1000 * (ring - two) / steps:+.3f} ms per step")
print(f"  unsharded optimizer (all-reduce, every rank updates all): {100 * one2 / plain:.1f} %; "
      f"sharding saves {1000 * (plain - two) / steps:+.3f} ms per step")
print(f"  unsharded with the all-reduce overlapped with backward (1 MiB buckets): {100 * one2 / over:.1f} %; "
      f"the overlap saves {1000 * (plain - over) / steps:+.3f} ms per step")
print(f"2 ranks x 1 thread: {one1 / two:.2f}x 1 process x 1 thread")
print(f"SyncBatchNorm cost: {1000 * (sync - two) / steps:+.3f} ms per step "
      f"({100 * (sync - two) / two:+.1f} % of the step)")
PY
