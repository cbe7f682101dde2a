// DeferSignals: an asynchronous signal raised while deferred is held pending and delivered when the
// guard ends, never inside; the GEMM (blas::sgemm) runs under it, and so do its OpenMP workers.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <csignal>
#include <vector>

#include "eformer/core/blas.h"
#include "eformer/core/signals.h"

namespace eformer {
namespace {
std::atomic<int> g_caught{0};
void count_signal(int) { g_caught.fetch_add(1); }
}  // namespace

TEST(Signals, DeferredSignalsArriveWhenTheGuardEnds) {
  struct sigaction sa {}, old {};
  sa.sa_handler = count_signal;
  sigaction(SIGUSR1, &sa, &old);
  g_caught = 0;
  {
    signals::DeferSignals defer;
    pthread_kill(pthread_self(), SIGUSR1);
    EXPECT_EQ(g_caught.load(), 0);  // pending, not delivered on this stack
    sigset_t mask;
    pthread_sigmask(SIG_BLOCK, nullptr, &mask);
    EXPECT_TRUE(sigismember(&mask, SIGUSR1));
    EXPECT_TRUE(sigismember(&mask, SIGINT));
    EXPECT_FALSE(sigismember(&mask, SIGSEGV));  // synchronous faults stay deliverable
  }
  EXPECT_EQ(g_caught.load(), 1);
  sigset_t mask;
  pthread_sigmask(SIG_BLOCK, nullptr, &mask);
  EXPECT_FALSE(sigismember(&mask, SIGUSR1));  // the caller's mask is restored
  sigaction(SIGUSR1, &old, nullptr);
}

TEST(Signals, TheGemmLeavesTheCallersMaskAsItWas) {
  std::vector<float> a(64 * 64, 1.0f), c(64 * 64, 0.0f);
  sigset_t before, after;
  pthread_sigmask(SIG_BLOCK, nullptr, &before);
  blas::sgemm(false, false, 64, 64, 64, 1.0f, a.data(), 64, a.data(), 64, 0.0f, c.data(), 64);
  pthread_sigmask(SIG_BLOCK, nullptr, &after);
  EXPECT_EQ(sigismember(&before, SIGINT), sigismember(&after, SIGINT));
  EXPECT_EQ(c[0], 64.0f);
}

}  // namespace eformer
