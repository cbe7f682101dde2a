// Asynchronous signals (SIGINT, SIGTERM, a profiler's SIGPROF, a Python handler's timer) are never
// delivered on a thread while it runs oneDNN's JIT GEMM. Those kernels point rsp at a heap
// workspace, so the kernel would write the signal frame into the heap: "corrupted size vs.
// prev_size" at the next free (oneDNN issue #4845, fixed upstream by PR #4855 in 2026; Debian 12
// ships oneDNN 2.6). A signal that arrives meanwhile stays pending and is delivered when the GEMM
// returns, to this thread or to another one that does not block it.
#pragma once
#include <csignal>

namespace eformer::signals {

// Blocks every asynchronous signal in the calling thread while it lives (the synchronous ones,
// SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS, stay deliverable), and for good in
// the OpenMP workers of the calling thread's pool (they run the GEMM's parallel parts). Nested
// guards cost nothing: an op that runs many GEMMs takes one around them all.
class DeferSignals {
 public:
  DeferSignals();
  ~DeferSignals();
  DeferSignals(const DeferSignals&) = delete;
  DeferSignals& operator=(const DeferSignals&) = delete;

 private:
  sigset_t previous_;
  bool active_ = false;
};

// The set DeferSignals blocks: every signal but the synchronous ones.
sigset_t asynchronous_signals();

}  // namespace eformer::signals
