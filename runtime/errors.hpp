#pragma once
// The two kinds of failure a user can cause. The CLI maps them to exit codes:
// UsageError -> 2 (a bad flag or request), DataError -> 1 (a bad file or value).
// Messages name the file, tensor, field or flag and what was expected.
#include <stdexcept>
#include <string>

namespace shardlm {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace shardlm
