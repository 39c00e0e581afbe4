#!/usr/bin/env bash
# The MPI communicator's collectives through shared memory and rings
# (tests/test_mpi_collectives.cpp) under mpirun, K = 2 and 3 (oversubscribed).
#   mpi_collectives_test.sh NORMLAB_TESTS NORMLAB
# Exit 77 (skipped, with the reason): no mpirun or a build without MPI.
set -uo pipefail
tests="$1"
normlab="$2"
command -v mpirun >/dev/null || { echo "SKIP: mpirun not found (Debian: openmpi-bin)"; exit 77; }
"$normlab" --version | grep -q "mpi: yes" || { echo "SKIP: normlab was built without MPI"; exit 77; }
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
# Under scripts/test-sanitizers: Open MPI's own start-up allocations are never freed.
[[ -n "${ASAN_OPTIONS:-}" ]] && export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
fails=0
for k in 2 3; do
  if timeout 60 mpirun --oversubscribe --mca mpi_yield_when_idle 1 -np "$k" "$tests" \
       --gtest_filter='MpiCollectives.*' --gtest_color=no >"/tmp/mpi_collectives.$$.log" 2>&1 &&
     [[ $(grep -c "\[  PASSED  \] 2 tests" "/tmp/mpi_collectives.$$.log") == "$k" ]]; then
    echo "ok: $k ranks"
  else
    echo "FAIL: $k ranks"; cat "/tmp/mpi_collectives.$$.log"; fails=$((fails + 1))
  fi
  rm -f "/tmp/mpi_collectives.$$.log"
done
[[ $fails == 0 ]] && echo "PASS" || exit 1
