// Reading the committed PyTorch fixtures (tests/fixtures/**.json) in tests.
#pragma once
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "normlab/tensor.hpp"

namespace normlab::testing {

inline std::string fixture_path(const std::string& relative) {
  return std::string(NORMLAB_SOURCE_DIR) + "/tests/fixtures/" + relative;
}

// Throws std::runtime_error if the file is missing or not JSON.
inline nlohmann::json read_fixture(const std::string& relative) {
  std::ifstream in(fixture_path(relative));
  if (!in) throw std::runtime_error("cannot open fixture " + fixture_path(relative));
  return nlohmann::json::parse(in);
}

// {"shape": [...], "data": [...]} -> Tensor (float32 values read back exactly).
template <typename T>
Tensor<T> tensor_from_json(const nlohmann::json& j) {
  Tensor<T> t(j.at("shape").get<Shape>());
  const auto data = j.at("data").get<std::vector<double>>();
  if (static_cast<int64_t>(data.size()) != t.numel())
    throw std::runtime_error("fixture tensor: data size does not match its shape");
  for (int64_t i = 0; i < t.numel(); ++i) t[i] = static_cast<T>(data[i]);
  return t;
}

}  // namespace normlab::testing
