// libFuzzer target: the config parsers on arbitrary JSON: run files ({"model", "train"}), model
// configs, train configs, and every registered mechanism's options. Each answers a config or an
// eformer::Error (or nlohmann's exception for a value of the wrong JSON type), never a crash.
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "eformer/attention/registry.h"
#include "eformer/models/config.h"
#include "eformer/train/config.h"

namespace {
template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const eformer::Error&) {
  } catch (const nlohmann::json::exception&) {
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace eformer;
  nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  expect_clean([&] { train::parse_run_config(j); });
  expect_clean([&] {
    models::ModelConfig c = models::parse_model_config(j);
    if (models::parse_model_config(models::to_json(c)).d_model != c.d_model) __builtin_trap();  // round trip
  });
  expect_clean([&] { train::parse_train_config(j); });
  for (const auto& entry : attention::mechanisms()) expect_clean([&] { entry.check_options(j); });
  return 0;
}
