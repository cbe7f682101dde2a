// Ctrl-C (SIGINT) and SIGTERM during `train`: the first asks the trainer to stop after the current
// step and write its checkpoint; a second ends the process at once (the last checkpoint on disk
// stays whole: checkpoint writes are atomic). The signals are blocked in every thread and taken by
// one dedicated thread with sigtimedwait, so no handler ever runs on a compute thread's stack.
#pragma once
#include <atomic>
#include <csignal>
#include <thread>

namespace eformer::cli {

class StopOnSignals {
 public:
  // Call before any worker thread starts: threads created later inherit the blocked mask.
  StopOnSignals();
  ~StopOnSignals();  // stops the thread and restores the mask; a pending signal is then delivered
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

  int received() const { return received_.load(); }  // the first signal's number, or 0

 private:
  void wait_loop();
  sigset_t set_;
  sigset_t previous_;
  std::atomic<int> received_{0};
  std::atomic<bool> done_{false};
  std::thread thread_;
};

}  // namespace eformer::cli
