// Data-parallel training over MPI: the process group the trainer runs in.
//
// Under `mpirun -np R eformer train ...` every rank builds the same model from the same seed, takes rows
// [r B/R, (r + 1) B/R) of each global batch (the batch is still a pure function of seed and step), and
// after its backward the gradients are summed over the ranks (allreduce) and divided by R, so every rank
// applies the same AdamW step to the same weights: the global-batch gradient, with the ranks' partial
// sums added in another order than one process adds them (the float32 rounding difference, see
// docs/ARCHITECTURE.md "Data parallelism"). Rank 0 alone writes logs, progress and checkpoints.
//
// Without MPI (a build without it, or a process not started by mpirun) the world is one rank and every
// call below is a no-op, so single-process training runs exactly the code path it always did.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "eformer/autograd/autograd.h"
#include "eformer/core/tensor.h"

namespace eformer::train {

class World {
 public:
  // The process's world: started on first use when the environment says mpirun launched the process
  // (OMPI_COMM_WORLD_SIZE or PMI_SIZE set), else one rank. MPI is finalized at exit.
  static World& get();

  int rank() const { return rank_; }
  int size() const { return size_; }
  bool parallel() const { return size_ > 1; }
  // "Open MPI 4.1.4" (the library this build uses), or "none" for a build without MPI.
  static std::string library();

  // In place: x[i] = sum over ranks of x[i] (small values: losses, flags; gradients go through
  // GradientAverager).
  void sum(double* x, int64_t n) const;
  // Rank 0's value on every rank.
  void broadcast(int64_t* x, int64_t n) const;
  // After an error on this rank: ends every rank of the job with `code` when MPI runs with more than one
  // rank (so the others do not wait forever in a collective); else returns.
  static void abort_if_parallel(int code);

 private:
  World();
  int rank_ = 0, size_ = 1;
};

// Averages the gradients of `params` over the ranks while the backward still runs (as PyTorch's DDP does):
// the parameters are grouped into buckets of at most `bucket_floats` (in reverse order, about the order the
// backward completes them); when every gradient of a bucket is complete (autograd::LeafReady) the bucket is
// packed and its sum over the ranks started (MPI_Iallreduce), and finish() waits for all of them and writes
// the averages back. Every rank builds the same buckets, so the sums are the same whatever the timing.
class GradientAverager {
 public:
  GradientAverager(const std::vector<Tensor>& params, const World& world, int64_t bucket_floats);
  ~GradientAverager();
  // For autograd::backward: called as each gradient completes.
  autograd::LeafReady hook();
  // After the backward: every bucket reduced (those not started yet now), grads = sum / ranks. Returns the
  // seconds spent here, waiting for the sums that the backward did not hide.
  double finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace eformer::train
