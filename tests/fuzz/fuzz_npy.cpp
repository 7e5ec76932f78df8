// The .npy writer's round trip: the file it writes, read back by the format's
// rules (magic, version 1.0, header length, a dict naming '<f4', C order and
// the shape, padded to 64 bytes), must hold the same shape and the same bytes.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <regex>
#include <string>
#include <vector>

#include "runtime/npy.hpp"
#include "tests/fuzz/fuzz_common.hpp"

namespace {

std::vector<int64_t> read_shape(const std::string& dict) {
  static const std::regex pattern(
      R"(^\{'descr': '<f4', 'fortran_order': False, 'shape': \(([0-9, ]*)\), \} *\n$)");
  std::smatch m;
  if (!std::regex_match(dict, m, pattern)) shardlm::fuzz::broken("header dict: " + dict);
  std::vector<int64_t> shape;
  const std::string dims = m[1];
  for (size_t i = 0; i < dims.size();) {
    size_t end = dims.find(',', i);
    if (end == std::string::npos) end = dims.size();
    const std::string item = dims.substr(i, end - i);
    if (item.find_first_not_of(' ') != std::string::npos) shape.push_back(std::stoll(item));
    i = end + 1;
  }
  return shape;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace shardlm;
  // First byte: the rank (0-4); then one byte per dimension (0-15); the rest
  // is the float data, repeated or cut to the shape's size.
  if (size < 1) return 0;
  const size_t rank = data[0] % 5;
  if (size < 1 + rank) return 0;
  std::vector<int64_t> shape;
  size_t numel = 1;
  for (size_t d = 0; d < rank; ++d) {
    shape.push_back(data[1 + d] % 16);
    numel *= size_t(shape.back());
  }
  const uint8_t* payload = data + 1 + rank;
  const size_t payload_size = size - 1 - rank;
  std::vector<float> values(numel);
  for (size_t i = 0; i < numel * 4 && payload_size > 0; ++i)
    reinterpret_cast<uint8_t*>(values.data())[i] = payload[i % payload_size];

  static const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                            ("shardlm-fuzz-" + std::to_string(getpid()) + ".npy");
  write_npy_f32(path, values.data(), shape);
  std::ifstream in(path, std::ios::binary);
  const std::string file{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  std::filesystem::remove(path);
  if (std::filesystem::exists(path.string() + ".partial")) fuzz::broken("a .partial file is left");

  if (file.size() < 10 || file.compare(0, 8, std::string("\x93NUMPY\x01\x00", 8)) != 0)
    fuzz::broken("magic or version");
  uint16_t header_len = 0;
  std::memcpy(&header_len, file.data() + 8, 2);
  if ((10 + size_t(header_len)) % 64 != 0 || 10 + size_t(header_len) > file.size())
    fuzz::broken("header length " + std::to_string(header_len));
  if (read_shape(file.substr(10, header_len)) != shape) fuzz::broken("shape differs");
  const size_t offset = 10 + header_len;
  if (file.size() - offset != numel * 4) fuzz::broken("data size differs");
  if (numel && std::memcmp(file.data() + offset, values.data(), numel * 4) != 0)
    fuzz::broken("data differs");
  return 0;
}
