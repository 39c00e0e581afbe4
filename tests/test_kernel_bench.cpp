// The kernel bench's plumbing (normlab/kernel_bench.hpp): shapes, cache modes
// and the buffer ring that makes "cold" mean "from DRAM". Timings themselves
// are the benchmarks' business, not the tests'.
#include <gtest/gtest.h>

#include <set>

#include "normlab/error.hpp"
#include "normlab/kernel_bench.hpp"

namespace nb = normlab::bench;

TEST(KernelBench, ParsesShapesAndRejectsBadOnes) {
  const nb::BenchShape s = nb::parse_shape("4096x1024");
  EXPECT_EQ(s.N, 4096);
  EXPECT_EQ(s.D, 1024);
  const nb::BenchShape t = nb::parse_shape("32x128x1024");
  EXPECT_EQ(t.N, 32);
  EXPECT_EQ(t.D, 128);
  EXPECT_EQ(t.L, 1024);
  EXPECT_EQ(nb::shape_text(t), "32x128x1024");
  EXPECT_EQ(nb::shape_text(s), "4096x1024");
  for (const char* bad : {"4096", "0x5", "5x0", "-1x5", "4x", "x4", "4x5x6x7", "4x5x0", "ax5"})
    EXPECT_THROW(nb::parse_shape(bad), normlab::Error) << bad;
}

TEST(KernelBench, CacheModes) {
  EXPECT_EQ(nb::parse_cache("warm"), nb::Cache::warm);
  EXPECT_EQ(nb::parse_cache("cold"), nb::Cache::cold);
  try {
    nb::parse_cache("tepid");
    FAIL() << "no error";
  } catch (const normlab::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tepid"), std::string::npos) << e.what();
  }
  // The MLP batch fits a core's L2 and stays warm; the memory-bound shapes go cold.
  EXPECT_EQ(nb::default_cache({128, 512}), nb::Cache::warm);
  EXPECT_EQ(nb::default_cache({4096, 1024}), nb::Cache::cold);
  EXPECT_EQ(nb::default_cache({16384, 768}), nb::Cache::cold);
  EXPECT_GT(nb::l3_bytes(), 0);
}

TEST(KernelBench, ColdRingCyclesThroughDistinctCopiesWorthFourL3s) {
  const nb::BenchShape shape{64, 48};
  nb::BufferRing warm(shape, nb::Cache::warm);
  EXPECT_EQ(warm.size(), 1u);
  EXPECT_EQ(&warm.next(), &warm.next());

  nb::BufferRing cold(shape, nb::Cache::cold);
  ASSERT_GE(cold.size(), 2u);
  const double touched = 2.0 * shape.N * shape.D * sizeof(float);
  // Four L3s between two uses of a set, unless capped at 64 sets.
  EXPECT_TRUE(cold.size() * touched >= 4.0 * nb::l3_bytes() || cold.size() == 64u)
      << cold.size() << " sets";
  std::set<const float*> inputs;
  const nb::NormBuffers& first = cold.next();
  inputs.insert(first.x.data());
  for (size_t i = 1; i < cold.size(); ++i) {
    const nb::NormBuffers& b = cold.next();
    EXPECT_EQ(b.x, first.x);  // same data, so every call times the same work
    inputs.insert(b.x.data());
  }
  EXPECT_EQ(inputs.size(), cold.size());
  EXPECT_EQ(&cold.next(), &first);  // and round again
}

TEST(KernelBench, RunsEveryPassAndReportsTheCopyFirst) {
  nb::BenchConfig config;
  config.shapes = {{8, 16}};
  config.repeats = 1;
  config.min_seconds = 0;
  config.cache = nb::Cache::cold;
  const auto rows = nb::run_kernel_bench(config);
  ASSERT_EQ(rows.size(), 1u + 2u * nb::all_kernels().size());
  EXPECT_EQ(rows.front().kernel, "copy");
  for (const nb::BenchRow& r : rows) {
    EXPECT_GT(r.seconds, 0) << r.kernel << " " << r.pass;
    EXPECT_EQ(r.cache, nb::Cache::cold);
    EXPECT_DOUBLE_EQ(r.copy_gbps, rows.front().gbps);
  }
  const std::string csv = nb::format_csv(rows, 1);
  EXPECT_EQ(csv.rfind("threads,N,D,cache,kernel,pass,", 0), 0u) << csv;
  EXPECT_NE(csv.find(",cold,layernorm,fwd,"), std::string::npos) << csv;
}
