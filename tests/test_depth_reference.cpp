// normlab's depth experiment against PyTorch 1.13's figures (20 seeds each):
// the criteria of issue 2, as `normlab depth --seeds 20 --reference` checks them.
#include <gtest/gtest.h>

#include <filesystem>

#include "normlab/depth.hpp"

using namespace normlab;

TEST(DepthReference, TwentySeedsAgreeWithPyTorch) {
  const std::string path = NORMLAB_SOURCE_DIR "/../shared/reference/depth_torch.csv";
  if (!std::filesystem::exists(path))
    GTEST_SKIP() << "PyTorch's reference " << path << " is not there; nothing to compare with";
  const auto reference = read_depth_csv(path);
  ASSERT_EQ(reference.size(), 5u * 30u);

  DepthConfig c;  // the notebook's setting: width 512, batch 5 of 28x28, 100 outputs, depths 0-29
  c.seeds = 20;
  const DepthResult r = run_depth(c);
  const DepthAgreement g = compare_depth(depth_rows(r), reference);
  ASSERT_EQ(g.checks.size(), 1u + 4u * 2u);  // decay for none; mean and largest gap for each norm
  EXPECT_TRUE(g.ok) << g.report;
  std::cout << g.report << "(" << r.seconds << " s for 20 sweeps on " << r.threads << " threads)\n";
}
