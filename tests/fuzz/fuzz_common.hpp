#pragma once
// What every fuzz target shares: an input either parses or is refused with
// the error a user would see (DataError or UsageError, one line naming what
// is wrong). Any other exception escaping a reader is a finding, like a crash.
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include "runtime/errors.hpp"

namespace shardlm::fuzz {

// Runs `read`; true when it returned, false when it refused the input cleanly.
template <typename Read>
bool refused_cleanly_or_read(Read&& read) {
  try {
    read();
    return true;
  } catch (const DataError&) {
  } catch (const UsageError&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz: %s escaped the reader: %s\n", typeid(e).name(), e.what());
    std::abort();
  }
  return false;
}

// Where results go that nothing else reads, so that computing them is kept.
inline volatile double g_sink = 0;

// An invariant of a successful read that does not hold.
[[noreturn]] inline void broken(const std::string& what) {
  std::fprintf(stderr, "fuzz: %s\n", what.c_str());
  std::abort();
}

}  // namespace shardlm::fuzz
