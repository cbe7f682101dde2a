// Where eformer finds the files it ships with (presets, the default corpus), wherever it is
// installed: never through source paths, so a tree installed with `cmake --install`, a pip-installed
// package, or a build folder can each be moved and still work.
//
// The resource folder is $EFORMER_HOME when set; else the first existing `share/eformer` found by
// walking up from the folder of the binary that holds this code (the CLI executable or the Python
// module), at most four levels:
//   <prefix>/bin/eformer                                  -> <prefix>/share/eformer        (cmake --install)
//   <prefix>/lib/python3/site-packages/eformer/_C.so      -> <prefix>/share/eformer
//   <venv>/.../site-packages/eformer/_C.so                -> .../eformer/share/eformer     (pip install)
//   <build>/eformer, <build>/python/eformer/_C.so         -> <build>/share/eformer         (a build folder;
//                                                             CMake links it to the source presets and data)
#pragma once
#include <string>

namespace eformer::io {

// The resource folder, or "" when none is found.
std::string resource_dir();
// The folder of the binary holding this code (for messages).
std::string binary_dir();
// resource_dir() / relative when it exists, else "". Files the user points at (EFORMER_PRESETS,
// EFORMER_DATA) are looked up by their callers before this.
std::string find_resource(const std::string& relative);
// "looked in $EFORMER_HOME (unset), <candidates>" for messages that say where a resource was sought.
std::string resource_search_description();

}  // namespace eformer::io
