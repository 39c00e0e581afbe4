// Helpers for the data tests: IDX bytes made in memory, gzip, a temporary directory.
#pragma once
#include <gtest/gtest.h>
#include <stdlib.h>
#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "normlab/error.hpp"
#include "temp_dir.hpp"

namespace normlab::testing {

// An IDX file: magic 0x0000<type><rank>, dims big-endian, then `data`.
inline std::string idx_file(const std::vector<uint32_t>& dims, const std::string& data,
                            uint8_t type = 0x08, int rank = -1) {
  std::string s = {0, 0, char(type), char(rank < 0 ? dims.size() : rank)};
  for (uint32_t d : dims)
    for (int shift = 24; shift >= 0; shift -= 8) s += char((d >> shift) & 0xFF);
  return s + data;
}

// n bytes 0, 1, 2, ... (mod `modulo`).
inline std::string ramp(size_t n, int modulo = 256) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) s[i] = char(i % modulo);
  return s;
}

// n pseudo-random bytes (incompressible, so a cut gzip stream is cut mid-data).
inline std::string noise(size_t n, uint32_t seed = 1) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) {
    seed = seed * 1664525u + 1013904223u;
    s[i] = char(seed >> 24);
  }
  return s;
}

// One gzip member holding `raw` (deflate, level 6).
inline std::string gzip(const std::string& raw) {
  z_stream zs{};
  if (deflateInit2(&zs, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
    throw std::runtime_error("deflateInit2");
  std::string out(deflateBound(&zs, raw.size()), 0);
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  zs.avail_in = static_cast<uInt>(raw.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&zs, Z_FINISH);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  if (rc != Z_STREAM_END) throw std::runtime_error("deflate");
  return out;
}

// The message of the normlab::Error that f throws ("" and a test failure if none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const normlab::Error& e) {
    return e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "threw a non-normlab exception: " << e.what();
    return "";
  }
  ADD_FAILURE() << "did not throw";
  return "";
}

}  // namespace normlab::testing
