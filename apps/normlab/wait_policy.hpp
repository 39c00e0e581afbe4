// How normlab's OpenMP threads wait at barriers, chosen before libgomp starts.
//
// GNU OpenMP's default is to spin for a while. On a quiet machine that is the
// fastest (seed001 epoch 0.35 s vs 0.54 s sleeping, a third of an epoch); on a
// machine whose CPUs are taken by other programs it is a disaster: a thread
// spins on a core its partner needs, and each barrier waits for a scheduler
// time slice (the same run took 9.7 s with two busy neighbours, 0.66 s with
// OMP_WAIT_POLICY=passive). libgomp reads the policy once, when it loads, so
// the choice is made by re-executing the program with the variable set.
#pragma once

namespace normlab::cli {

// For the compute subcommands: unless the user set OMP_WAIT_POLICY or
// GOMP_SPINCOUNT, samples how many other threads are runnable (/proc/loadavg,
// a few samples over ~20 ms); if they would leave fewer free CPUs than
// OpenMP threads, re-executes with OMP_WAIT_POLICY=passive and a one-line
// note on stderr. Returns normally otherwise (or if the re-exec fails).
void choose_wait_policy(int argc, char** argv);

}  // namespace normlab::cli
