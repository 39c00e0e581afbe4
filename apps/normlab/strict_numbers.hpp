// Strict parsing of every numeric flag. CLI11 2.1 reads integers with
// strtoll/strtoull in base 0 and does not check the range: 99999999999999999999
// silently becomes 9223372036854775807, -1 for an unsigned flag becomes
// 18446744073709551615, and 010 is octal 8. Floats accept nan and inf.
#pragma once
#include <CLI/CLI.hpp>

namespace normlab::cli {

// Adds a check to every INT, UINT and FLOAT option of the app's subcommands
// (recursively): integers must be decimal and fit their type (unsigned ones not
// negative), floats must be finite. A refusal names the flag and the text given.
void make_numbers_strict(CLI::App& app);

}  // namespace normlab::cli
