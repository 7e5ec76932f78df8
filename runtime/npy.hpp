#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace shardlm {

// Writes a NumPy .npy file (format 1.0, '<f4', C order), atomically: the data
// goes to a temporary name that is renamed only once the file is whole.
void write_npy_f32(const std::filesystem::path& path, const float* data,
                   const std::vector<int64_t>& shape);

// Removes the temporary file of a write in progress, if any; safe to call
// from a signal handler (an interrupted job leaves no partial output).
void remove_partial_output();

}  // namespace shardlm
