#include "eformer/train/distributed.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <unordered_map>

#include "eformer/core/error.h"

#ifdef EFORMER_MPI
#include <mpi.h>
#endif

namespace eformer::train {

namespace {
bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

#ifdef EFORMER_MPI
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw IOError(std::string("distributed training: ") + what + " failed: " + std::string(text, size_t(length)));
}
#endif
}  // namespace

World& World::get() {
  static World world;
  return world;
}

World::World() {
#ifdef EFORMER_MPI
  if (!launched_by_mpirun()) return;
  int ready = 0;
  MPI_Initialized(&ready);
  if (!ready) {
    check(MPI_Init(nullptr, nullptr), "MPI_Init");
    std::atexit([] {
      int finalized = 0;
      MPI_Finalized(&finalized);
      if (!finalized) MPI_Finalize();
    });
  }
  MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &size_);
#else
  EF_CHECK(!launched_by_mpirun(), ValueError,
           "distributed training: this process was started by mpirun, but eformer was built without MPI "
           "(install libopenmpi-dev and rebuild)");
#endif
}

std::string World::library() {
#ifdef EFORMER_MPI
  char text[MPI_MAX_LIBRARY_VERSION_STRING];
  int length = 0;
  MPI_Get_library_version(text, &length);
  std::string s(text, size_t(length));
  return s.substr(0, s.find(','));
#else
  return "none";
#endif
}

void World::sum(double* x, int64_t n) const {
#ifdef EFORMER_MPI
  if (size_ > 1)
    check(MPI_Allreduce(MPI_IN_PLACE, x, int(n), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "a sum over the ranks");
#endif
}

void World::broadcast(int64_t* x, int64_t n) const {
#ifdef EFORMER_MPI
  if (size_ > 1) check(MPI_Bcast(x, int(n), MPI_INT64_T, 0, MPI_COMM_WORLD), "a broadcast");
#endif
}

void World::abort_if_parallel(int code) {
#ifdef EFORMER_MPI
  int initialized = 0, finalized = 0, size = 1;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  if (!initialized || finalized) return;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  if (size > 1) MPI_Abort(MPI_COMM_WORLD, code);
#endif
}

struct GradientAverager::Impl {
  const World& world;
  std::vector<Tensor> params;
  std::unordered_map<const AutogradMeta*, size_t> index;  // parameter -> its position in params
  std::vector<size_t> bucket_of;                          // per parameter
  std::vector<std::vector<size_t>> buckets;               // parameter positions per bucket
  // Per step:
  std::vector<int> pending;  // per bucket: gradients not complete yet
  std::vector<std::vector<float>> data;
  std::vector<bool> started;
#ifdef EFORMER_MPI
  std::vector<MPI_Request> requests;
#endif

  Impl(const std::vector<Tensor>& p, const World& w, int64_t bucket_floats) : world(w), params(p) {
    bucket_of.resize(params.size());
    int64_t filled = 0;
    for (size_t i = params.size(); i-- > 0;) {
      index[params[i].autograd_meta().get()] = i;
      if (buckets.empty() || (filled > 0 && filled + params[i].numel() > bucket_floats)) {
        buckets.emplace_back();
        filled = 0;
      }
      buckets.back().push_back(i);
      bucket_of[i] = buckets.size() - 1;
      filled += params[i].numel();
    }
    reset();
  }

  void reset() {
    pending.assign(buckets.size(), 0);
    for (size_t b = 0; b < buckets.size(); ++b) pending[b] = int(buckets[b].size());
    data.assign(buckets.size(), {});
    started.assign(buckets.size(), false);
#ifdef EFORMER_MPI
    requests.assign(buckets.size(), MPI_REQUEST_NULL);
#endif
  }

  // Packs bucket b's gradients (those defined: the same on every rank) and starts their sum.
  void start(size_t b) {
    started[b] = true;
    std::vector<float>& buffer = data[b];
    for (size_t i : buckets[b]) {
      const Tensor g = grad(params[i]);
      if (!g.defined()) continue;
      const Tensor c = g.contiguous_data();
      buffer.insert(buffer.end(), c.data<float>(), c.data<float>() + c.numel());
    }
#ifdef EFORMER_MPI
    EF_CHECK(int64_t(buffer.size()) < (int64_t(1) << 31), ValueError,
             "distributed training: a gradient bucket of ", buffer.size(), " floats is too large for MPI");
    check(MPI_Iallreduce(MPI_IN_PLACE, buffer.data(), int(buffer.size()), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD,
                         &requests[b]),
          "the gradient allreduce");
#endif
  }

  // Lets MPI move the started sums along (its TCP and shared-memory transports progress inside MPI calls).
  void progress() {
#ifdef EFORMER_MPI
    for (size_t b = 0; b < buckets.size(); ++b) {
      if (!started[b] || requests[b] == MPI_REQUEST_NULL) continue;
      int done = 0;
      check(MPI_Test(&requests[b], &done, MPI_STATUS_IGNORE), "the gradient allreduce");
    }
#endif
  }
};

GradientAverager::GradientAverager(const std::vector<Tensor>& params, const World& world, int64_t bucket_floats)
    : impl_(std::make_unique<Impl>(params, world, bucket_floats)) {}

GradientAverager::~GradientAverager() {
#ifdef EFORMER_MPI
  // An exception mid-step: leave no sum in flight over freed buffers.
  for (MPI_Request& r : impl_->requests)
    if (r != MPI_REQUEST_NULL) MPI_Wait(&r, MPI_STATUS_IGNORE);
#endif
}

autograd::LeafReady GradientAverager::hook() {
  return [impl = impl_.get()](const AutogradMeta* leaf) {
    auto found = impl->index.find(leaf);
    if (found == impl->index.end()) return;
    const size_t b = impl->bucket_of[found->second];
    if (--impl->pending[b] == 0) impl->start(b);
    impl->progress();
  };
}

double GradientAverager::finish() {
  const auto t0 = std::chrono::steady_clock::now();
  Impl& m = *impl_;
  for (size_t b = 0; b < m.buckets.size(); ++b)
    if (!m.started[b]) m.start(b);
#ifdef EFORMER_MPI
  check(MPI_Waitall(int(m.requests.size()), m.requests.data(), MPI_STATUSES_IGNORE), "the gradient allreduce");
#endif
  const float inv = 1.0f / float(m.world.size());
  for (size_t b = 0; b < m.buckets.size(); ++b) {
    size_t at = 0;
    for (size_t i : m.buckets[b]) {
      Tensor g = grad(m.params[i]);
      if (!g.defined()) continue;
      if (!g.is_contiguous()) {
        g = g.clone_data();
        set_grad(m.params[i], g);
      }
      float* p = g.data<float>();
      for (int64_t j = 0; j < g.numel(); ++j) p[j] = m.data[b][at++] * inv;
    }
  }
  m.reset();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace eformer::train
