// Runs the real normlab executable (NORMLAB_BINARY) as a child process: its own
// working directory, stdout and stderr captured separately, a time limit, and
// for the kill tests a handle to SIGKILL it at a chosen moment.
#pragma once
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace normlab::testing {

struct ProcessResult {
  bool exited = false;     // ended by exit() (not by a signal)
  int code = -1;           // exit code if exited
  int signal = 0;          // the signal that ended it, if not
  bool timed_out = false;  // killed by us after the time limit
  double seconds = 0;
  std::string out, err;

  // How it ended, for failure messages.
  std::string status() const {
    if (timed_out) return "timed out after " + std::to_string(seconds) + " s";
    if (!exited) return "killed by signal " + std::to_string(signal);
    return "exit " + std::to_string(code);
  }
};

class Process {
 public:
  // Starts `NORMLAB_BINARY args...` in `cwd`; stdout and stderr go to files in `log_dir`.
  Process(const std::vector<std::string>& args, const std::string& cwd, const std::string& log_dir)
      : out_path_(log_dir + "/stdout.txt"), err_path_(log_dir + "/stderr.txt") {
    std::vector<std::string> argv_s = {NORMLAB_BINARY};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    start_ = std::chrono::steady_clock::now();
    pid_ = fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      // Child: only async-signal-safe calls until exec.
      const int out = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int err = ::open(err_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      const int in = ::open("/dev/null", O_RDONLY);
      if (out < 0 || err < 0 || in < 0 || ::chdir(cwd.c_str()) != 0) _exit(126);
      ::dup2(in, 0), ::dup2(out, 1), ::dup2(err, 2);
      ::execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      int status;
      ::waitpid(pid_, &status, 0);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  double elapsed() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  // True once the child has ended (reaps it).
  bool finished() {
    if (reaped_) return true;
    const pid_t r = ::waitpid(pid_, &status_, WNOHANG);
    if (r == pid_) reaped_ = true;
    return reaped_;
  }
  void kill_now() {
    if (!reaped_) ::kill(pid_, SIGKILL);
  }
  // Waits for the end (SIGKILL after `limit_seconds`) and collects the result.
  ProcessResult wait(double limit_seconds) {
    ProcessResult r;
    while (!finished()) {
      if (elapsed() > limit_seconds) {
        kill_now();
        r.timed_out = true;
        ::waitpid(pid_, &status_, 0);
        reaped_ = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    r.seconds = elapsed();
    r.exited = WIFEXITED(status_);
    if (r.exited) r.code = WEXITSTATUS(status_);
    if (WIFSIGNALED(status_)) r.signal = WTERMSIG(status_);
    r.out = slurp(out_path_);
    r.err = slurp(err_path_);
    return r;
  }

  static std::string slurp(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

 private:
  std::string out_path_, err_path_;
  pid_t pid_ = -1;
  int status_ = 0;
  bool reaped_ = false;
  std::chrono::steady_clock::time_point start_;
};

// Runs normlab to the end (or the limit) in `cwd`, logs in `log_dir`.
inline ProcessResult run_normlab(const std::vector<std::string>& args, const std::string& cwd,
                                 const std::string& log_dir, double limit_seconds = 60) {
  Process p(args, cwd, log_dir);
  return p.wait(limit_seconds);
}

// Every file and directory under `dir` (relative paths, recursively) with its
// bytes ("<dir>" for directories): two snapshots compare equal only if nothing
// was added, removed or changed.
inline std::map<std::string, std::string> snapshot(const std::string& dir) {
  std::map<std::string, std::string> files;
  if (!std::filesystem::exists(dir)) return files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    const std::string rel = std::filesystem::relative(e.path(), dir).string();
    if (e.is_directory())
      files[rel] = "<dir>";
    else if (e.is_regular_file())
      files[rel] = Process::slurp(e.path().string());
    else
      files[rel] = "<special>";
  }
  return files;
}

// The names in a snapshot, for messages.
inline std::string listing(const std::map<std::string, std::string>& snap) {
  std::string s;
  for (const auto& [name, bytes] : snap)
    s += "  " + name + " (" + std::to_string(bytes.size()) + " bytes)\n";
  return s.empty() ? "  (empty)\n" : s;
}

}  // namespace normlab::testing
