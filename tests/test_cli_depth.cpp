// normlab depth (and model) from the outside: bad flags give a message naming
// the flag and value and a non-zero exit, never a crash; a good run writes its files.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;

namespace {

struct CliRun {
  int code = -1;  // exit code; -1 if killed by a signal
  std::string output;
};

std::string quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

CliRun normlab(const std::vector<std::string>& args) {
  std::string cmd = quote(NORMLAB_BINARY);
  for (const auto& a : args) {
    cmd += ' ';
    cmd += quote(a);
  }
  cmd += " 2>&1";
  CliRun r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) r.output.append(buf, n);
  const int status = pclose(p);
  if (WIFEXITED(status)) r.code = WEXITSTATUS(status);
  return r;
}

// A clean refusal: a normal non-zero exit (no signal, no internal error), with all parts in the
// message.
void expect_refused(const std::vector<std::string>& args, const std::vector<std::string>& parts) {
  const CliRun r = normlab(args);
  std::string line;
  for (const auto& a : args) {
    line += a;
    line += ' ';
  }
  EXPECT_TRUE(r.code > 0 && r.code != 3 && r.code < 128) << line << "exit " << r.code << "\n"
                                                         << r.output;
  for (const auto& p : parts)
    EXPECT_NE(r.output.find(p), std::string::npos) << line << ": '" << p << "' not in\n"
                                                   << r.output;
}

}  // namespace

TEST(CliDepth, BadFlagsNameTheFlagAndValue) {
  expect_refused({"depth", "--arch", "bn-mid"}, {"--arch bn-mid", "unknown architecture",
                                                 "none, bn-pre, bn-post, ln-pre, ln-post"});
  expect_refused({"depth", "--arch", "bn-pre,nope"}, {"--arch nope"});
  expect_refused({"depth", "--max-depth", "-1"}, {"--max-depth -1", "between 0 and 1000"});
  expect_refused({"depth", "--max-depth", "100000"}, {"--max-depth 100000"});
  expect_refused({"depth", "--min-depth", "5", "--max-depth", "2"},
                 {"--min-depth 5 is greater than --max-depth 2"});
  expect_refused({"depth", "--seeds", "0"}, {"--seeds 0", "between 1 and 100000"});
  expect_refused({"depth", "--seeds", "99999999999"}, {"--seeds 99999999999"});
  expect_refused({"depth", "--seeds", "lots"}, {"--seeds", "lots"});
  expect_refused({"depth", "--threads", "-2"}, {"--threads -2"});
  expect_refused({"depth", "--threads", "100000"}, {"--threads 100000"});
  expect_refused({"depth", "--width", "0"}, {"--width 0"});
  expect_refused({"depth", "--width", "5000000"}, {"--width 5000000", "between 1 and 16384"});
  expect_refused({"depth", "--outputs", "-5"}, {"--outputs -5"});
  expect_refused({"depth", "--batch", "1"}, {"--batch 1", "BatchNorm"});
  expect_refused({"depth", "--max-depth", "0", "--out", "/dev/null/sub"},
                 {"--out /dev/null/sub", "cannot create the directory"});
  expect_refused({"depth", "--reference", "/nonexistent/ref.csv"},
                 {"--reference /nonexistent/ref.csv", "no such file"});
  expect_refused({"depth", "--no-such-flag"}, {"--no-such-flag"});
}

TEST(CliDepth, ADisagreeingReferenceFails) {
  const fs::path ref = fs::temp_directory_path() / "normlab_test_cli_ref.csv";
  std::ofstream(ref) << "kind,depth,mean_norm,sd_norm\nbn-pre,0,1000,0.1\nbn-pre,2,1000,0.1\n";
  expect_refused({"depth", "--arch", "bn-pre", "--max-depth", "2", "--reference", ref.string()},
                 {"FAIL", "disagree with", ref.string()});
}

TEST(CliDepth, ARunWritesTheCsvAndThePlot) {
  const fs::path dir = fs::temp_directory_path() / "normlab_test_cli_depth";
  fs::remove_all(dir);
  const CliRun r = normlab({"depth", "--arch", "none,ln-post", "--max-depth", "2", "--seeds", "2",
                            "--width", "64", "--threads", "1", "--out", dir.string()});
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("ln-post"), std::string::npos);
  EXPECT_NE(r.output.find("2 architectures x 3 depths x 2 draws"), std::string::npos) << r.output;
  std::ifstream csv(dir / "depth.csv");
  std::string header, line;
  std::getline(csv, header);
  EXPECT_EQ(header, "kind,depth,mean_norm,sd_norm,seeds");
  int rows = 0;
  while (std::getline(csv, line)) ++rows;
  EXPECT_EQ(rows, 6);
  if (std::system("gnuplot --version > /dev/null 2>&1") == 0) {
    EXPECT_GT(fs::file_size(dir / "depth.png"), 1000u);
  }
}

TEST(CliModel, BadSpecsAreRefusedWithTheColumn) {
  expect_refused({"model", "flatten, linear(0)", "--input", "28x28"},
                 {"column 17", "size must be positive, got 0"});
  expect_refused({"model", "linear(784, 512), relu, linear(256, 10)"},
                 {"linear(256, 10) expects 256 input features", "from linear(784, 512)"});
  expect_refused({"model", "seed001", "--input", "0x3"}, {"--input '0x3'"});
  const CliRun ok = normlab({"model", "seed001", "--keys"});
  EXPECT_EQ(ok.code, 0);
  EXPECT_EQ(ok.output.substr(0, ok.output.find('\n')), "0.bias\t(512)");
}
