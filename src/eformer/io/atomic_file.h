// Atomic file writes: the bytes go to a uniquely named temporary file in the target's directory,
// are fsync'ed, then renamed over the target. Readers see the old file or the complete new one,
// never a partial one; on any failure the temporary file is removed and the target is untouched.
// A temporary file left by a writer that was killed (its process is gone) is removed by the next
// write to the same target.
#pragma once
#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace eformer::io {

// Appends bytes to the file being written; throws IOError on a failed write.
using ByteSink = std::function<void(const void* data, size_t size)>;

// Calls writer(sink) to produce the contents. IOError (naming the path and the errno text) on a
// failed create/write/fsync/rename; an exception thrown by `writer` propagates after cleanup.
void write_file_atomic(const std::string& path, const std::function<void(const ByteSink& sink)>& writer);
void write_file_atomic(const std::string& path, std::string_view bytes);

// The whole file; IOError naming the path and the errno text when it cannot be read.
std::string read_file(const std::string& path);

}  // namespace eformer::io
