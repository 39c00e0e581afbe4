// The one oneDNN CPU engine every float primitive of normlab runs on (Conv2d,
// the average pools), made on first use.
#pragma once
#include <oneapi/dnnl/dnnl.hpp>

namespace normlab::detail {

inline dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

}  // namespace normlab::detail
