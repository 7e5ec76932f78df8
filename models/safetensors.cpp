#include "models/safetensors.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>

#include "runtime/errors.hpp"
#include "runtime/output_file.hpp"

namespace shardlm {

using nlohmann::json;
namespace fs = std::filesystem;

class MappedFile {
 public:
  explicit MappedFile(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0)
      throw DataError(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      throw DataError(fmt::format("{}: cannot stat: {}", path.string(), std::strerror(errno)));
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        ::close(fd);
        throw DataError(fmt::format("{}: cannot map: {}", path.string(), std::strerror(errno)));
      }
      data_ = static_cast<const std::byte*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
};

namespace {

// Bytes per element of every dtype the safetensors format defines, so that
// tensors shardlm does not use are still checked for consistent offsets.
std::optional<size_t> safetensors_dtype_size(const std::string& name) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},
      {"U32", 4},  {"F32", 4}, {"F64", 8}, {"I64", 8},     {"U64", 8}};
  auto it = sizes.find(name);
  if (it == sizes.end()) return std::nullopt;
  return it->second;
}

TensorRecord parse_entry(const std::string& file, const std::string& name, const json& entry,
                         const std::byte* data_start, size_t data_size) {
  auto bad = [&](const std::string& what) {
    return DataError(fmt::format("{}: corrupt header: tensor \"{}\": {}", file, name, what));
  };
  if (!entry.is_object()) throw bad("expected an object with dtype, shape and data_offsets");
  TensorRecord r;
  r.name = name;
  r.file = file;
  if (!entry.contains("dtype") || !entry["dtype"].is_string())
    throw bad("dtype missing or not a string");
  r.dtype_name = entry["dtype"].get<std::string>();
  r.dtype = dtype_from_safetensors(r.dtype_name);
  if (!entry.contains("shape") || !entry["shape"].is_array())
    throw bad("shape missing or not a list");
  for (const json& d : entry["shape"]) {
    if (!d.is_number_unsigned())
      throw bad("shape holds a value that is not a non-negative integer");
    r.shape.push_back(d.get<int64_t>());
  }
  const json& offsets = entry.contains("data_offsets") ? entry["data_offsets"] : json();
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    throw bad("data_offsets must be [begin, end], two non-negative integers");
  const auto begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
  if (begin > end)
    throw bad(fmt::format("data_offsets [{}, {}] end before they begin", begin, end));
  if (end > data_size)
    throw DataError(fmt::format(
        "{}: tensor \"{}\": data_offsets [{}, {}] run past the end of the data ({} bytes); "
        "the file is truncated or corrupt",
        file, name, begin, end, data_size));
  if (auto size = safetensors_dtype_size(r.dtype_name)) {
    const uint64_t expected = uint64_t(numel_of(r.shape)) * *size;
    if (end - begin != expected)
      throw bad(fmt::format("data_offsets span {} bytes but {} {} needs {}", end - begin,
                            r.dtype_name, shape_str(r.shape), expected));
  }
  r.data = data_start + begin;
  r.nbytes = size_t(end - begin);
  return r;
}

}  // namespace

std::map<std::string, TensorRecord> parse_safetensors(const std::byte* data, size_t size,
                                                      const std::string& file) {
  if (size < 8)
    throw DataError(
        fmt::format("{}: file is {} bytes, too short for a safetensors header "
                    "(8-byte length, then JSON); it is truncated or not safetensors",
                    file, size));
  uint64_t header_len = 0;
  std::memcpy(&header_len, data, 8);  // little-endian, as on every supported host
  if (header_len > size - 8)
    throw DataError(
        fmt::format("{}: corrupt header: header length {} runs past the end of the "
                    "file ({} bytes); it is truncated or not safetensors",
                    file, header_len, size));
  const char* header_text = reinterpret_cast<const char*>(data) + 8;
  json header;
  try {
    header = json::parse(header_text, header_text + header_len);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: corrupt header: not valid JSON ({})", file, e.what()));
  }
  if (!header.is_object())
    throw DataError(fmt::format("{}: corrupt header: expected a JSON object", file));
  const std::byte* data_start = data + 8 + header_len;
  const size_t data_size = size - 8 - header_len;
  std::map<std::string, TensorRecord> tensors;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    tensors.emplace(it.key(), parse_entry(file, it.key(), it.value(), data_start, data_size));
  }
  return tensors;
}

SafetensorsFile::SafetensorsFile(const fs::path& path)
    : mapping_(std::make_unique<MappedFile>(path)),
      tensors_(parse_safetensors(mapping_->data(), mapping_->size(), path.string())) {}

SafetensorsFile::~SafetensorsFile() = default;
SafetensorsFile::SafetensorsFile(SafetensorsFile&&) noexcept = default;

std::map<std::string, std::string> parse_weight_map(const std::string& text,
                                                    const std::string& file) {
  json index;
  try {
    index = json::parse(text);
  } catch (const json::exception& e) {
    throw DataError(fmt::format("{}: not valid JSON: {}", file, e.what()));
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    throw DataError(fmt::format("{}: missing object field \"weight_map\"", file));
  std::map<std::string, std::string> weight_map;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    // Shards sit beside the index: a path elsewhere is refused, not followed.
    if (!shard.is_string() || shard.get<std::string>().empty() ||
        shard.get<std::string>().find_first_of(std::string("/\0", 2)) != std::string::npos ||
        shard == "." || shard == "..")
      throw DataError(
          fmt::format("{}: weight_map[\"{}\"]: expected a file name in its directory, got {}", file,
                      name, shard.dump()));
    weight_map.emplace(name, shard.get<std::string>());
  }
  return weight_map;
}

Checkpoint::Checkpoint(const fs::path& model_dir) : dir_(model_dir) {
  const fs::path single = model_dir / "model.safetensors";
  const fs::path index_path = model_dir / "model.safetensors.index.json";
  std::error_code ec;
  if (fs::exists(index_path, ec)) {
    std::ifstream in(index_path);
    if (!in) throw DataError(fmt::format("{}: cannot open", index_path.string()));
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    std::map<std::string, size_t> file_slot;
    for (const auto& [name, file_name] : parse_weight_map(text, index_path.string())) {
      if (file_slot.emplace(file_name, files_.size()).second)
        files_.emplace_back(model_dir / file_name);
      const auto& held = files_[file_slot[file_name]].tensors();
      auto it = held.find(name);
      if (it == held.end())
        throw DataError(
            fmt::format("{}: weight_map puts tensor \"{}\" in {}, which does not hold it",
                        index_path.string(), name, file_name));
      index_[name] = &it->second;
    }
  } else if (fs::exists(single, ec)) {
    files_.emplace_back(single);
    for (const auto& [name, record] : files_.back().tensors()) index_[name] = &record;
  } else {
    throw DataError(fmt::format("{}: no model.safetensors or model.safetensors.index.json",
                                model_dir.string()));
  }
}

const TensorRecord& Checkpoint::tensor(const std::string& name, const Shape& shape) const {
  auto it = index_.find(name);
  if (it == index_.end())
    throw DataError(fmt::format("{}: tensor \"{}\" is missing from the checkpoint (expected {})",
                                dir_.string(), name, shape_str(shape)));
  const TensorRecord& r = *it->second;
  if (r.shape != shape)
    throw DataError(fmt::format("{}: tensor \"{}\" has shape {}, expected {}", r.file, name,
                                shape_str(r.shape), shape_str(shape)));
  if (!r.dtype || (*r.dtype != DType::F32 && *r.dtype != DType::BF16 && *r.dtype != DType::F16))
    throw DataError(fmt::format("{}: tensor \"{}\" has dtype {}, expected F32, BF16 or F16", r.file,
                                name, r.dtype_name));
  return r;
}

void release_pages(const TensorRecord& record) {
  static const uintptr_t page = uintptr_t(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<uintptr_t>(record.data) / page * page;
  const auto end = reinterpret_cast<uintptr_t>(record.data) + record.nbytes;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

void write_safetensors(const fs::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    const uint64_t bytes = uint64_t(numel_of(t.shape)) * dtype_size(t.dtype);
    header[t.name] = {{"dtype", dtype_name(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps tensor data 8-byte aligned
  write_file_atomically(path, [&](std::ostream& out) {
    const uint64_t header_len = text.size();
    out.write(reinterpret_cast<const char*>(&header_len), 8);
    out.write(text.data(), std::streamsize(text.size()));
    for (const TensorToWrite& t : tensors)
      out.write(static_cast<const char*>(t.data),
                std::streamsize(uint64_t(numel_of(t.shape)) * dtype_size(t.dtype)));
  });
}

}  // namespace shardlm
