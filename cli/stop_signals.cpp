#include "stop_signals.h"

#include <pthread.h>
#include <unistd.h>

#include <ctime>

#include "eformer/train/trainer.h"

namespace eformer::cli {

StopOnSignals::StopOnSignals() {
  sigemptyset(&set_);
  sigaddset(&set_, SIGINT);
  sigaddset(&set_, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set_, &previous_);
  thread_ = std::thread([this] { wait_loop(); });
}

StopOnSignals::~StopOnSignals() {
  done_.store(true);
  thread_.join();
  pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
}

void StopOnSignals::wait_loop() {
  const timespec tick{0, 50'000'000};  // 50 ms: how soon the destructor's join returns
  while (!done_.load()) {
    const int sig = sigtimedwait(&set_, nullptr, &tick);
    if (sig <= 0) continue;
    int expected = 0;
    if (!received_.compare_exchange_strong(expected, sig)) _exit(128 + sig);  // the second signal
    train::Trainer::request_stop();
  }
}

}  // namespace eformer::cli
