// `eformer demo`: trains a small MLP from C++ (the engine's end-to-end check until the model layer lands).
#pragma once

namespace eformer::cli {
int run_demo(int argc, char** argv);  // argv[0] is "demo"
}
