#pragma once
#include <cstdint>
#include <filesystem>
#include <vector>

namespace shardlm {

// Writes a NumPy .npy file (format 1.0, '<f4', C order), whole or not at all
// (runtime/output_file.hpp).
void write_npy_f32(const std::filesystem::path& path, const float* data,
                   const std::vector<int64_t>& shape);

}  // namespace shardlm
