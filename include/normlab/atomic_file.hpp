// Files are written whole or not at all: the bytes go to "<path>.tmp.<pid>" in
// the same directory, are flushed to disk, and the temporary is renamed over
// `path` (rename is atomic on POSIX). A crash leaves the old file, never half a new one.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace normlab {

// Throws Error naming `path` and the system's reason if anything fails; the
// temporary is removed on failure.
void write_file_atomic(const std::string& path, std::string_view bytes);

// Removes "<dir>/<name>.tmp.<pid>" for each of `names` whose writer process is
// gone: what a writer killed mid-write (SIGKILL, power loss) leaves behind.
// Temporaries of live processes are left alone. Errors are ignored.
void remove_stale_temporaries(const std::string& dir, const std::vector<std::string>& names);

}  // namespace normlab
