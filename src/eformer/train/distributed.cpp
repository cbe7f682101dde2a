#include "eformer/train/distributed.h"

#include <algorithm>
#include <cstdlib>

#include "eformer/core/error.h"

#ifdef EFORMER_MPI
#include <mpi.h>
#endif

namespace eformer::train {

namespace {
bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMI_SIZE"); }

#ifdef EFORMER_MPI
// MPI counts are int: long buffers go in pieces of at most 2^30 elements.
constexpr int64_t kPiece = int64_t(1) << 30;

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw IOError(std::string("distributed training: ") + what + " failed: " + std::string(text, size_t(length)));
}

template <typename T>
void sum_pieces(T* x, int64_t n, MPI_Datatype type) {
  for (int64_t i = 0; i < n; i += kPiece)
    check(MPI_Allreduce(MPI_IN_PLACE, x + i, int(std::min(kPiece, n - i)), type, MPI_SUM, MPI_COMM_WORLD),
          "the gradient allreduce");
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

void World::sum(float* x, int64_t n) const {
#ifdef EFORMER_MPI
  if (size_ > 1) sum_pieces(x, n, MPI_FLOAT);
#endif
}

void World::sum(double* x, int64_t n) const {
#ifdef EFORMER_MPI
  if (size_ > 1) sum_pieces(x, n, MPI_DOUBLE);
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

}  // namespace eformer::train
