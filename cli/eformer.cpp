// The `eformer` executable: the whole CLI is cli::run (cli/cli.cpp).
#include "common.h"

int main(int argc, char** argv) { return eformer::cli::run(argc, argv); }
