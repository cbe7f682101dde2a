#include "eformer/io/atomic_file.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>

#include "eformer/core/allocator.h"
#include "eformer/core/error.h"

namespace eformer::io {
namespace {

std::string errno_text(int err) { return std::string(std::strerror(err)); }

[[noreturn]] void fail(const std::string& path, const char* what, int err) {
  throw IOError(detail::concat("cannot write '", path, "': ", what, " failed: ", errno_text(err)));
}

std::string directory_of(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Opens a new file next to `path` named "<path>.tmp.<pid>.<n>", created exclusively (so two
// writers never share one) with mode 0666 filtered by the umask, as a plain create would be.
int open_temp(const std::string& path, std::string& temp_path) {
  static std::atomic<uint64_t> counter{0};
  uint64_t salt = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  for (int attempt = 0; attempt < 100; ++attempt) {
    uint64_t n = counter.fetch_add(1) ^ (salt << 16);
    temp_path = detail::concat(path, ".tmp.", ::getpid(), ".", n);
    int fd = ::open(temp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0) return fd;
    if (errno != EEXIST) fail(path, "creating a temporary file", errno);
  }
  fail(path, "creating a temporary file", EEXIST);
}

void write_all(int fd, const std::string& path, const void* data, size_t size) {
  const char* p = static_cast<const char*>(data);
  while (size > 0) {
    ssize_t n = ::write(fd, p, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(path, "write", errno);
    }
    p += n;
    size -= size_t(n);
  }
}

// Removes "<path>.tmp.<pid>.<n>" files left by a writer that was killed mid-write: those of a
// process that no longer exists (kill(pid, 0) says ESRCH). Best effort; errors are ignored.
void remove_stale_temps(const std::string& path) {
  const std::string dir = directory_of(path);
  const std::string prefix = path.substr(path.find_last_of('/') + 1) + ".tmp.";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return;
  while (dirent* e = ::readdir(d)) {
    const std::string name = e->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
    if (pid <= 0 || *end != '.' || pid == long(::getpid())) continue;
    if (::kill(pid_t(pid), 0) != 0 && errno == ESRCH) ::unlink((dir + "/" + name).c_str());
  }
  ::closedir(d);
}

}  // namespace

void write_file_atomic(const std::string& path, const std::function<void(const ByteSink& sink)>& writer) {
  if (path.empty()) throw IOError("cannot write '': the path is empty");
  remove_stale_temps(path);
  std::string temp_path;
  int fd = open_temp(path, temp_path);
  try {
    writer([&](const void* data, size_t size) { write_all(fd, path, data, size); });
    if (::fsync(fd) != 0) fail(path, "fsync", errno);
    int closed = ::close(fd);
    fd = -1;
    if (closed != 0) fail(path, "close", errno);
    if (::rename(temp_path.c_str(), path.c_str()) != 0) fail(path, "rename", errno);
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(temp_path.c_str());
    throw;
  }
  // Persist the rename itself; best effort (some filesystems refuse fsync on directories).
  int dir = ::open(directory_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir >= 0) {
    ::fsync(dir);
    ::close(dir);
  }
}

void write_file_atomic(const std::string& path, std::string_view bytes) {
  write_file_atomic(path, [&](const ByteSink& sink) { sink(bytes.data(), bytes.size()); });
}

std::string read_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IOError(detail::concat("cannot read '", path, "': ", errno_text(errno)));
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    ::close(fd);
    throw IOError(detail::concat("cannot read '", path, "': ", errno_text(EISDIR)));
  }
  // Sizes are checked before reading: a device (/dev/zero) never ends, and a file larger than the
  // memory available (a sparse 20 GB file) would end in an allocation failure after a long read.
  const int64_t available = allocator::available_bytes();
  const uint64_t limit = available > 0 ? uint64_t(available) : uint64_t(1) << 40;
  if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    ::close(fd);
    throw IOError(detail::concat("cannot read '", path, "': it is a device, not a file"));
  }
  if (uint64_t(st.st_size) > limit) {
    ::close(fd);
    throw IOError(detail::concat("cannot read '", path, "': it is ", st.st_size >> 20, " MiB, more than the ",
                                 limit >> 20, " MiB of memory available"));
  }
  if (st.st_size > 0) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw IOError(detail::concat("cannot read '", path, "': ", errno_text(err)));
    }
    if (n == 0) break;
    out.append(buf, size_t(n));
    if (out.size() > limit) {  // a pipe that goes on
      ::close(fd);
      throw IOError(detail::concat("cannot read '", path, "': more than the ", limit >> 20,
                                   " MiB of memory available"));
    }
  }
  ::close(fd);
  return out;
}

}  // namespace eformer::io
