// Errors: exceptions at the boundaries (constructors, shape checks, files, flags).
// Messages name the layer, file or flag and print the offending numbers.
// The library never prints and never exits; apps/ turns an Error into a message and exit code.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace normlab {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Builds a message from any streamable parts: fail("Linear(784, 512): input has ", d, " features").
template <typename... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  (os << ... << parts);
  throw Error(os.str());
}

}  // namespace normlab
