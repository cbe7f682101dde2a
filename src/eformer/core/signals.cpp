#include "eformer/core/signals.h"

#include <omp.h>
#include <pthread.h>

#include <initializer_list>

namespace eformer::signals {
namespace {

thread_local bool t_blocked_for_good = false;  // an OpenMP worker after block_workers
thread_local int t_depth = 0;                  // DeferSignals alive in this thread (nested: no syscall)
thread_local int t_workers_blocked = 0;        // the largest team this thread has blocked

// Blocks the asynchronous signals in the workers of a team of `threads` (not in the caller).
// libgomp keeps a team's threads for the next regions of the same thread, so they stay blocked.
void block_workers(int threads) {
  const sigset_t set = asynchronous_signals();
#pragma omp parallel num_threads(threads)
  if (omp_get_thread_num() != 0) {
    pthread_sigmask(SIG_BLOCK, &set, nullptr);
    t_blocked_for_good = true;
  }
}

}  // namespace

sigset_t asynchronous_signals() {
  sigset_t set;
  sigfillset(&set);
  for (int s : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS}) sigdelset(&set, s);
  return set;
}

DeferSignals::DeferSignals() {
  if (t_blocked_for_good || t_depth > 0) return;
  const sigset_t set = asynchronous_signals();
  active_ = pthread_sigmask(SIG_BLOCK, &set, &previous_) == 0;
  t_depth += active_;
  const int threads = omp_get_max_threads();
  if (threads > t_workers_blocked && !omp_in_parallel()) {
    block_workers(threads);
    t_workers_blocked = threads;
  }
}

DeferSignals::~DeferSignals() {
  if (!active_) return;
  --t_depth;
  pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
}

}  // namespace eformer::signals
