#pragma once
// Typed access to YAML maps whose errors name the file, the key and what was
// expected, so a bad spec file is a DataError a user can act on.
#include <yaml-cpp/yaml.h>

#include <set>
#include <string>

namespace shardlm {

class YamlFields {
 public:
  YamlFields(YAML::Node node, std::string file, std::string prefix = "");
  // Loads FILE; throws DataError when it is missing or not a YAML map.
  static YamlFields load_file(const std::string& file);
  // The same from the text of a file; `file` names it in errors.
  static YamlFields parse(const std::string& text, const std::string& file);

  bool has(const std::string& key) const;
  double number(const std::string& key) const;  // required
  double number(const std::string& key, double fallback) const;
  double positive(const std::string& key) const;
  double fraction(const std::string& key) const;  // in (0, 1]
  double fraction(const std::string& key, double fallback) const;
  int64_t positive_int(const std::string& key) const;
  int64_t positive_int(const std::string& key, int64_t fallback) const;
  std::string text(const std::string& key) const;
  std::string text(const std::string& key, const std::string& fallback) const;
  bool flag(const std::string& key, bool fallback) const;
  YamlFields child(const std::string& key) const;  // a nested map, required
  // The raw node of a required key, for values of several shapes (a scalar,
  // a list or a map), checked by the caller with where() in its messages.
  YAML::Node node(const std::string& key) const;

  // Throws DataError naming every key of this map that no accessor asked
  // for: a misspelt optional key must not be silently ignored.
  void reject_unknown() const;

  const std::string& file() const { return file_; }
  // "FILE:LINE: key 'a.b'": the line of the key, or of this map when the key
  // is absent, so an error in a long file can be found.
  std::string where(const std::string& key) const;

 private:
  YAML::Node get(const std::string& key) const;
  YAML::Node node_;
  std::string file_, prefix_;
  mutable std::set<std::string> asked_;
};

}  // namespace shardlm
