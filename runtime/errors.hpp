#pragma once
// The two kinds of failure a user can cause. The CLI maps them to exit codes:
// UsageError -> 2 (a bad flag or request), DataError -> 1 (a bad file or value).
// Messages name the file, tensor, field or flag and what was expected.
#include <stdexcept>
#include <string>
#include <string_view>

namespace shardlm {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// "shardlm: warning: MESSAGE" on stderr, from the first rank of an MPI job
// only (or the lone process), so a job of N ranks says it once.
void warn(std::string_view message);

// "1.50 GiB", "38.6 MiB", "12 KiB": a byte count for a message.
std::string format_bytes(double bytes);

}  // namespace shardlm
