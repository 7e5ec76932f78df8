#include "partitioning/partition_spec.hpp"

#include <fmt/core.h>

#include <cctype>
#include <stdexcept>

namespace shardlm {

std::string axes_minus(std::string_view a, std::string_view b) {
  std::string out;
  for (char c : a)
    if (b.find(c) == std::string_view::npos) out += c;
  return out;
}

static bool is_axis(char c) {
  return c == 'x' || c == 'y' || c == 'z';
}

PartitionSpec PartitionSpec::parse(std::string_view text) {
  PartitionSpec spec;
  const std::string_view marker = "(partialsum-";
  if (size_t p = text.find(marker); p != text.npos) {
    size_t close = text.find(')', p);
    if (close == text.npos)
      throw std::invalid_argument(fmt::format("spec '{}': missing ')'", text));
    spec.partial_sum = std::string(text.substr(p + marker.size(), close - p - marker.size()));
    text = text.substr(0, p);
  }
  for (size_t i = 0; i < text.size();) {
    char c = text[i];
    if (c == ' ') {
      ++i;
    } else if (c == '_') {
      if (spec.dims.empty())
        throw std::invalid_argument(fmt::format("spec '{}': '_' before any dimension", text));
      ++i;
      while (i < text.size() && is_axis(text[i])) spec.dims.back().axes += text[i++];
    } else if (std::isupper(static_cast<unsigned char>(c))) {
      spec.dims.push_back({c, ""});
      ++i;
    } else {
      throw std::invalid_argument(fmt::format("spec '{}': unexpected '{}'", text, c));
    }
  }
  for (char a : spec.partial_sum + spec.sharded_axes())
    if (!is_axis(a)) throw std::invalid_argument(fmt::format("spec '{}': bad axis '{}'", text, a));
  return spec;
}

static std::string format_spec(const PartitionSpec& spec, bool paper_order) {
  std::string out;
  for (size_t i = 0; i < spec.dims.size(); ++i) {
    const DimSharding& d = spec.dims[i];
    // A space follows a subscript so that "E_x F_zy" stays readable.
    if (i > 0 && !spec.dims[i - 1].axes.empty()) out += ' ';
    out += d.dim;
    if (!d.axes.empty()) {
      std::string axes = d.axes;
      if (paper_order) axes = axes_minus("xyz", axes_minus("xyz", axes));
      out += '_' + axes;
    }
  }
  if (!spec.partial_sum.empty()) out += fmt::format(" (partialsum-{})", spec.partial_sum);
  return out;
}

std::string PartitionSpec::str() const {
  return format_spec(*this, false);
}
std::string PartitionSpec::paper_str() const {
  return format_spec(*this, true);
}

const std::string& PartitionSpec::axes_of(char dim) const {
  static const std::string none;
  for (const auto& d : dims)
    if (d.dim == dim) return d.axes;
  return none;
}

bool PartitionSpec::has_dim(char dim) const {
  for (const auto& d : dims)
    if (d.dim == dim) return true;
  return false;
}

std::string PartitionSpec::sharded_axes() const {
  std::string all;
  for (const auto& d : dims) all += d.axes;
  return axes_minus("xyz", axes_minus("xyz", all));
}

PartitionSpec PartitionSpec::with_axes(char dim, std::string axes) const {
  PartitionSpec out = *this;
  for (auto& d : out.dims)
    if (d.dim == dim) d.axes = axes;
  return out;
}

static int64_t size_of(const DimSizes& sizes, char dim) {
  auto it = sizes.find(dim);
  if (it == sizes.end())
    throw std::invalid_argument(fmt::format("no size given for dimension '{}'", dim));
  return it->second;
}

std::vector<int64_t> PartitionSpec::local_shape(const DimSizes& sizes, const Mesh& mesh) const {
  std::vector<int64_t> shape;
  for (const auto& d : dims) {
    const int64_t parts = mesh.axes_size(d.axes);
    shape.push_back((size_of(sizes, d.dim) + parts - 1) / parts);
  }
  return shape;
}

int64_t PartitionSpec::local_elements(const DimSizes& sizes, const Mesh& mesh) const {
  int64_t n = 1;
  for (int64_t s : local_shape(sizes, mesh)) n *= s;
  return n;
}

int64_t PartitionSpec::global_elements(const DimSizes& sizes) const {
  int64_t n = 1;
  for (const auto& d : dims) n *= size_of(sizes, d.dim);
  return n;
}

std::string PartitionSpec::uneven_dims(const DimSizes& sizes, const Mesh& mesh) const {
  std::string out;
  for (const auto& d : dims)
    if (size_of(sizes, d.dim) % mesh.axes_size(d.axes) != 0) out += d.dim;
  return out;
}

}  // namespace shardlm
