#include "partitioning/yaml_fields.hpp"

#include <fmt/core.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {

YamlFields::YamlFields(YAML::Node node, std::string file, std::string prefix)
    : node_(std::move(node)), file_(std::move(file)), prefix_(std::move(prefix)) {}

YamlFields YamlFields::load_file(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (std::error_code ec; !std::filesystem::is_regular_file(file, ec) || !in)
    throw DataError(fmt::format("{}: no such file", file));
  return parse(std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()},
               file);
}

YamlFields YamlFields::parse(const std::string& text, const std::string& file) {
  // yaml-cpp passes any bytes through; values go on into JSON (sweep
  // results), which holds UTF-8 only.
  if (const auto offset = utf8::first_invalid(text))
    throw DataError(fmt::format("{}: not UTF-8 text (invalid byte at offset {})", file, *offset));
  // YAML admits no NUL character, and yaml-cpp reads one as the end of the
  // stream, passing on bytes past it that are not the file's.
  if (const size_t nul = text.find('\0'); nul != std::string::npos)
    throw DataError(fmt::format("{}: not YAML text (a NUL byte at offset {})", file, nul));
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    throw DataError(fmt::format("{}: not valid YAML: {}", file, e.what()));
  }
  if (!root.IsMap()) throw DataError(fmt::format("{}: expected a YAML map at the top level", file));
  return YamlFields(root, file);
}

std::string YamlFields::where(const std::string& key) const {
  YAML::Mark mark = node_.Mark();
  for (const auto& kv : node_)
    if (kv.first.IsScalar() && kv.first.Scalar() == key) mark = kv.first.Mark();
  // yaml-cpp counts lines from 0; a node built in code has no position.
  if (mark.is_null()) return fmt::format("{}: key '{}{}'", file_, prefix_, key);
  return fmt::format("{}:{}: key '{}{}'", file_, mark.line + 1, prefix_, key);
}

bool YamlFields::has(const std::string& key) const {
  asked_.insert(key);
  return node_[key].IsDefined() && !node_[key].IsNull();
}

void YamlFields::reject_unknown() const {
  std::string unknown, first;
  for (const auto& kv : node_) {
    if (!kv.first.IsScalar()) {
      const YAML::Mark mark = kv.first.Mark();
      throw DataError(fmt::format("{}:{}: expected a key name{}, got a list or map", file_,
                                  mark.line + 1, prefix_.empty() ? "" : " in '" + prefix_ + "'"));
    }
    const std::string key = kv.first.Scalar();
    if (asked_.count(key)) continue;
    if (unknown.empty()) first = key;
    unknown += (unknown.empty() ? "'" : ", '") + prefix_ + key + "'";
  }
  if (!unknown.empty()) {
    std::string known;
    for (const auto& k : asked_) known += (known.empty() ? "" : ", ") + k;
    // where() names the file and the line of the first unknown key.
    const std::string at = where(first);
    throw DataError(fmt::format("{}: unknown or unused key(s) {} here (this section reads: {})",
                                at.substr(0, at.find(": key '")), unknown, known));
  }
}

YAML::Node YamlFields::get(const std::string& key) const {
  if (!has(key)) throw DataError(fmt::format("{} is missing", where(key)));
  YAML::Node n = node_[key];
  if (!n.IsScalar() && !n.IsMap() && !n.IsSequence())
    throw DataError(fmt::format("{}: unexpected value", where(key)));
  return n;
}

double YamlFields::number(const std::string& key) const {
  YAML::Node n = get(key);
  try {
    if (!n.IsScalar()) throw YAML::Exception(YAML::Mark(), "not a scalar");
    double v = n.as<double>();
    if (!std::isfinite(v)) throw YAML::Exception(YAML::Mark(), "not finite");
    return v;
  } catch (const YAML::Exception&) {
    throw DataError(fmt::format("{}: expected a number, got '{}'", where(key),
                                n.IsScalar() ? n.Scalar() : std::string("a non-scalar")));
  }
}

double YamlFields::number(const std::string& key, double fallback) const {
  return has(key) ? number(key) : fallback;
}

double YamlFields::positive(const std::string& key) const {
  double v = number(key);
  if (v <= 0) throw DataError(fmt::format("{}: expected a positive number, got {}", where(key), v));
  return v;
}

double YamlFields::fraction(const std::string& key) const {
  double v = number(key);
  if (!(v > 0 && v <= 1))
    throw DataError(fmt::format("{}: expected a fraction in (0, 1], got {}", where(key), v));
  return v;
}

double YamlFields::fraction(const std::string& key, double fallback) const {
  return has(key) ? fraction(key) : fallback;
}

int64_t YamlFields::positive_int(const std::string& key) const {
  double v = number(key);
  if (v < 1 || v != std::floor(v) || v > 9.2e18)
    throw DataError(fmt::format("{}: expected a positive integer, got {}", where(key), v));
  return static_cast<int64_t>(v);
}

int64_t YamlFields::positive_int(const std::string& key, int64_t fallback) const {
  return has(key) ? positive_int(key) : fallback;
}

std::string YamlFields::text(const std::string& key) const {
  YAML::Node n = get(key);
  if (!n.IsScalar()) throw DataError(fmt::format("{}: expected a string", where(key)));
  return n.Scalar();
}

std::string YamlFields::text(const std::string& key, const std::string& fallback) const {
  return has(key) ? text(key) : fallback;
}

bool YamlFields::flag(const std::string& key, bool fallback) const {
  if (!has(key)) return fallback;
  YAML::Node n = get(key);
  try {
    return n.as<bool>();
  } catch (const YAML::Exception&) {
    throw DataError(fmt::format("{}: expected true or false, got '{}'", where(key), n.Scalar()));
  }
}

YAML::Node YamlFields::node(const std::string& key) const {
  return get(key);
}

YamlFields YamlFields::child(const std::string& key) const {
  YAML::Node n = get(key);
  if (!n.IsMap()) throw DataError(fmt::format("{}: expected a map of keys", where(key)));
  return YamlFields(n, file_, prefix_ + key + ".");
}

}  // namespace shardlm
