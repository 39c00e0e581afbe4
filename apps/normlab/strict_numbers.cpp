#include "strict_numbers.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <string>

namespace normlab::cli {
namespace {

// Returns "" and rewrites `text` in plain decimal (no '+', no leading zeros) if
// it is a whole number in range; otherwise the reason.
std::string check_integer(std::string& text, bool is_unsigned) {
  const char* range =
      is_unsigned ? "0 to 18446744073709551615" : "-9223372036854775808 to 9223372036854775807";
  size_t i = 0;
  const bool negative = !text.empty() && text[0] == '-';
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) i = 1;
  if (i == text.size() || text.find_first_not_of("0123456789", i) != std::string::npos)
    return "'" + text + "' is not a whole number (expected decimal digits, " + range + ")";
  if (is_unsigned && negative && text.find_first_not_of('0', 1) != std::string::npos)
    return "'" + text + "' is negative (expected a whole number from " + range + ")";
  errno = 0;
  char* end = nullptr;
  std::string normal;
  if (is_unsigned) {
    const unsigned long long v = std::strtoull(text.c_str() + i, &end, 10);
    normal = std::to_string(v);
  } else {
    const long long v = std::strtoll(text.c_str(), &end, 10);
    normal = std::to_string(v);
  }
  if (errno == ERANGE)
    return "'" + text + "' is out of range (expected a whole number from " + range + ")";
  text = normal;
  return "";
}

std::string check_float(const std::string& text) {
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  if (text.empty() || end != text.c_str() + text.size()) return "'" + text + "' is not a number";
  if (!std::isfinite(v)) return "'" + text + "' is not a finite number";
  return "";
}

}  // namespace

void make_numbers_strict(CLI::App& app) {
  for (CLI::App* sub : app.get_subcommands([](CLI::App*) { return true; }))
    make_numbers_strict(*sub);
  for (CLI::Option* opt : app.get_options()) {
    const std::string type = opt->get_type_name();
    if (type == "INT" || type == "UINT") {
      const bool is_unsigned = type == "UINT";
      opt->transform(CLI::Validator(
          [is_unsigned](std::string& s) { return check_integer(s, is_unsigned); }, ""));
    } else if (type == "FLOAT") {
      opt->check(CLI::Validator([](std::string& s) { return check_float(s); }, ""));
    }
  }
}

}  // namespace normlab::cli
