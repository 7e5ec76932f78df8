#pragma once
// Reading Hugging Face safetensors checkpoints: each file is memory-mapped and
// its header validated up front; tensor bytes are touched only when a caller
// reads them, so a rank that needs a slice reads only that slice's pages.
#include <cstddef>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "runtime/dtype.hpp"
#include "runtime/tensor.hpp"

namespace shardlm {

struct TensorRecord {
  std::string name;
  std::string dtype_name;      // as written in the header, e.g. "BF16"
  std::optional<DType> dtype;  // when shardlm knows the dtype
  Shape shape;
  const std::byte* data = nullptr;
  size_t nbytes = 0;
  std::string file;  // for messages
};

// The tensors a safetensors file of `size` bytes at `data` holds (8-byte
// header length, JSON header, tensor bytes), their offsets checked against the
// data; records point into `data`. `file` names it in errors (DataError).
std::map<std::string, TensorRecord> parse_safetensors(const std::byte* data, size_t size,
                                                      const std::string& file);

// The weight_map of a model.safetensors.index.json: tensor name -> shard file
// name (a plain name in the index's directory).
std::map<std::string, std::string> parse_weight_map(const std::string& text,
                                                    const std::string& file);

class MappedFile;

class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);  // throws DataError
  ~SafetensorsFile();
  SafetensorsFile(SafetensorsFile&&) noexcept;
  const std::map<std::string, TensorRecord>& tensors() const { return tensors_; }

 private:
  std::unique_ptr<MappedFile> mapping_;
  std::map<std::string, TensorRecord> tensors_;
};

// A checkpoint directory: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class Checkpoint {
 public:
  explicit Checkpoint(const std::filesystem::path& model_dir);  // throws DataError
  // The named tensor, checked to have `shape` and a float dtype (F32, BF16, F16).
  const TensorRecord& tensor(const std::string& name, const Shape& shape) const;
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const std::map<std::string, const TensorRecord*>& records() const { return index_; }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
  std::vector<SafetensorsFile> files_;
  std::map<std::string, const TensorRecord*> index_;
};

// Drops the mapped pages of a tensor from this process's resident memory once
// its bytes have been copied out (they are read again from the file if needed).
void release_pages(const TensorRecord& record);

// Writes a safetensors file atomically (a temporary name, renamed when whole).
struct TensorToWrite {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;
};
void write_safetensors(const std::filesystem::path& path, const std::vector<TensorToWrite>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace shardlm
