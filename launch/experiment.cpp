#include "launch/experiment.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <charconv>
#include <filesystem>
#include <regex>
#include <set>

#include "partitioning/layouts.hpp"
#include "partitioning/mesh.hpp"
#include "partitioning/yaml_fields.hpp"
#include "runtime/dtype.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
namespace {

using nlohmann::json;

enum class Kind { kText, kInt, kIntOrAuto, kMesh, kFfn, kAttn, kWeights, kActivations };

struct GridKey {
  const char* name;
  Kind kind;
  const char* fallback;  // nullptr: required
};

// Grid keys in expansion order (the first varies slowest) and their defaults.
// `chips: auto` is the mesh's size when the mesh is given, else 1.
constexpr GridKey kGridKeys[] = {
    {"model", Kind::kText, nullptr},
    {"chips", Kind::kIntOrAuto, "auto"},
    {"mesh", Kind::kMesh, "auto"},
    {"pp", Kind::kInt, "1"},
    {"micro_batches", Kind::kIntOrAuto, "auto"},
    {"ffn_prefill", Kind::kFfn, "auto"},
    {"attn_prefill", Kind::kAttn, "auto"},
    {"ffn_decode", Kind::kFfn, "auto"},
    {"attn_decode", Kind::kAttn, "auto"},
    {"weights", Kind::kWeights, "auto"},
    {"activations", Kind::kActivations, "auto"},
    {"batch", Kind::kInt, "1"},
    {"prompt_len", Kind::kInt, nullptr},
    {"gen_len", Kind::kInt, nullptr},
    {"threads", Kind::kInt, "1"},
};

// `ffn: X` sets ffn_prefill and ffn_decode together (one grid dimension).
struct Shorthand {
  const char *name, *prefill, *decode;
  Kind kind;
};
constexpr Shorthand kShorthands[] = {{"ffn", "ffn_prefill", "ffn_decode", Kind::kFfn},
                                     {"attn", "attn_prefill", "attn_decode", Kind::kAttn}};

const GridKey* grid_key(const std::string& name) {
  for (const GridKey& k : kGridKeys)
    if (name == k.name) return &k;
  return nullptr;
}

std::string known_grid_keys(bool shorthands) {
  std::vector<std::string> names;
  for (const GridKey& k : kGridKeys) names.push_back(k.name);
  if (shorthands)
    for (const Shorthand& s : kShorthands) names.push_back(s.name);
  return fmt::format("{}", fmt::join(names, ", "));
}

const Shorthand* shorthand(const std::string& name) {
  for (const Shorthand& s : kShorthands)
    if (name == s.name) return &s;
  return nullptr;
}

std::string position(const std::string& file, const YAML::Node& node) {
  const YAML::Mark m = node.Mark();
  return m.is_null() ? file : fmt::format("{}:{}", file, m.line + 1);
}

std::optional<int64_t> as_int(const std::string& text) {
  int64_t v = 0;
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return v;
}

// One scalar of a grid key, checked and normalised (meshes as "X,Y,Z").
// `where` is "FILE:LINE: key 'grid.K'" for the message.
json scalar_value(Kind kind, const std::string& text, const std::string& where) {
  auto bad = [&](const std::string& expected) {
    return DataError(fmt::format("{}: expected {}, got '{}'", where, expected, text));
  };
  const bool is_auto = text == "auto";
  switch (kind) {
    case Kind::kText:
      if (text.empty()) throw bad("a non-empty string");
      return text;
    case Kind::kIntOrAuto:
      if (is_auto) return "auto";
      [[fallthrough]];
    case Kind::kInt: {
      const auto v = as_int(text);
      if (!v || *v < 1 || *v > (1 << 30))
        throw bad(kind == Kind::kInt ? "a positive integer" : "a positive integer or auto");
      return *v;
    }
    case Kind::kMesh:
      if (is_auto) return "auto";
      try {
        const Mesh m = Mesh::parse(text);
        return fmt::format("{},{},{}", m.x, m.y, m.z);
      } catch (const std::invalid_argument&) {
        throw bad("a mesh X,Y,Z or auto");
      }
    case Kind::kFfn:
      if (is_auto) return "auto";
      try {
        return std::string(name(parse_ffn_layout(text)));
      } catch (const std::invalid_argument&) {
        throw bad("1d, 2d, wg-x, wg-xy, wg-xyz or auto");
      }
    case Kind::kAttn:
      if (is_auto) return "auto";
      try {
        return std::string(name(parse_attn_layout(text)));
      } catch (const std::invalid_argument&) {
        throw bad("heads, batch or auto");
      }
    case Kind::kWeights:
      if (is_auto) return "auto";
      if (const auto d = weight_dtype_from_user(text)) return std::string(weight_dtype_name(*d));
      throw bad("f32, bf16, f16, int8 or auto");
    case Kind::kActivations:
      if (is_auto) return "auto";
      if (text == "f32" || text == "bf16") return text;
      throw bad("f32, bf16 or auto");
  }
  return nullptr;
}

// The values of one grid key: a scalar, a list of scalars, or a range
// {from, to, step} (arithmetic) or {from, to, times} (geometric), both ends
// included. `path` is the key as a message names it ("grid.batch").
std::vector<json> grid_values(const YamlFields& map, const std::string& key,
                              const std::string& path, Kind kind) {
  const YAML::Node node = map.node(key);
  const std::string where = map.where(key);
  std::vector<json> out;
  if (node.IsScalar()) {
    out.push_back(scalar_value(kind, node.Scalar(), where));
  } else if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) {
      const std::string item_where =
          fmt::format("{}: key '{}[{}]'", position(map.file(), node[i]), path, i);
      if (!node[i].IsScalar())
        throw DataError(fmt::format("{}: expected a single value", item_where));
      out.push_back(scalar_value(kind, node[i].Scalar(), item_where));
    }
    if (out.empty()) throw DataError(fmt::format("{}: an empty list", where));
  } else {
    if (kind != Kind::kInt && kind != Kind::kIntOrAuto)
      throw DataError(
          fmt::format("{}: expected a value or a list (ranges are for integers)", where));
    const YamlFields range = map.child(key);
    const int64_t from = range.positive_int("from"), to = range.positive_int("to");
    const bool geometric = range.has("times");
    const int64_t step = geometric ? range.positive_int("times") : range.positive_int("step", 1);
    range.reject_unknown();
    if (to < from)
      throw DataError(fmt::format("{}: range from {} to {} is empty", where, from, to));
    if (geometric && step < 2)
      throw DataError(fmt::format("{}: 'times' must be at least 2", where));
    for (int64_t v = from; v <= to; v = geometric ? v * step : v + step) out.push_back(v);
  }
  std::set<std::string> seen;
  for (const json& v : out)
    if (!seen.insert(v.dump()).second)
      throw DataError(fmt::format("{}: value {} appears twice", where, v.dump()));
  return out;
}

// A `where:` rule: "KEY OP VALUE", VALUE a literal (checked as KEY's values
// are) or another key.
struct Rule {
  std::string text, where, left, op, right_key;
  json literal;

  bool holds(const json& config) const {
    const json& a = config.at(left);
    const json& b = right_key.empty() ? literal : config.at(right_key);
    if (op == "==") return a == b;
    if (op == "!=") return a != b;
    if (!a.is_number() || !b.is_number())
      throw DataError(fmt::format("{}: '{}' compares {} with {}, which are not both numbers", where,
                                  text, a.dump(), b.dump()));
    const int64_t x = a.get<int64_t>(), y = b.get<int64_t>();
    if (op == "<") return x < y;
    if (op == "<=") return x <= y;
    if (op == ">") return x > y;
    if (op == ">=") return x >= y;
    return y % x == 0;  // divides
  }
};

Rule parse_rule(const std::string& text, const std::string& where) {
  static const std::regex re(R"(^\s*([a-z_]+)\s*(==|!=|<=|>=|<|>|\s+divides\s+)\s*([^\s]+)\s*$)");
  std::smatch m;
  if (!std::regex_match(text, m, re))
    throw DataError(fmt::format(
        "{}: '{}' is not a rule KEY OP VALUE (OP one of == != < <= > >= divides)", where, text));
  Rule r{text, where, m[1], m[2], "", nullptr};
  r.op.erase(std::remove(r.op.begin(), r.op.end(), ' '), r.op.end());
  const GridKey* k = grid_key(r.left);
  if (!k)
    throw DataError(fmt::format("{}: '{}' is not a grid key (known: {})", where, r.left,
                                known_grid_keys(false)));
  if (grid_key(m[3]))
    r.right_key = m[3];
  else
    r.literal = scalar_value(k->kind, m[3], where);
  return r;
}

// `varying` pairs a label name with the config key it shows.
std::string point_label(const json& config,
                        const std::vector<std::pair<std::string, std::string>>& varying) {
  std::vector<std::string> parts;
  for (const auto& [label, key] : varying) {
    const json& v = config.at(key);
    parts.push_back(fmt::format("{}={}", label, v.is_string() ? v.get<std::string>() : v.dump()));
  }
  return parts.empty() ? "single point" : fmt::format("{}", fmt::join(parts, " "));
}

}  // namespace

std::string fnv1a64_hex(const std::string& text) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : text) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return fmt::format("{:016x}", h);
}

Experiment Experiment::load(const std::string& file, bool dry_run) {
  return from_yaml(YamlFields::load_file(file), dry_run);
}

Experiment Experiment::from_yaml(const YamlFields& top, bool dry_run) {
  const std::string& file = top.file();
  Experiment e;
  e.file = file;
  e.name = top.text("name", std::filesystem::path(file).stem().string());
  e.description = top.text("description", "");
  e.hardware = top.text("hardware", e.hardware);
  e.repetitions = int(top.positive_int("repetitions", 1));
  if (top.has("warmup")) {
    const double w = top.number("warmup");
    if (w < 0 || w != std::floor(w) || w > 1000)
      throw DataError(fmt::format("{}: expected an integer >= 0, got {}", top.where("warmup"), w));
    e.warmup = int(w);
  }
  e.timeout_s = top.has("timeout_s") ? top.positive("timeout_s") : e.timeout_s;

  if (top.has("launcher")) {
    const YamlFields l = top.child("launcher");
    e.launcher.mpirun = l.text("mpirun", e.launcher.mpirun);
    if (l.has("args")) {
      const YAML::Node args = l.node("args");
      if (!args.IsSequence())
        throw DataError(fmt::format("{}: expected a list of strings", l.where("args")));
      for (const auto& a : args) {
        if (!a.IsScalar())
          throw DataError(fmt::format("{}: expected a list of strings", l.where("args")));
        e.launcher.args.push_back(a.Scalar());
      }
    }
    e.launcher.hostfile = l.text("hostfile", "");
    e.launcher.ranks_per_node = int(l.positive_int("ranks_per_node", 0));
    if (l.has("env")) {
      const YAML::Node env = l.node("env");
      if (!env.IsMap())
        throw DataError(fmt::format("{}: expected a map NAME: value", l.where("env")));
      for (const auto& kv : env) {
        if (!kv.second.IsScalar())
          throw DataError(
              fmt::format("{}: value of {} must be a string", l.where("env"), kv.first.Scalar()));
        e.launcher.env[kv.first.Scalar()] = kv.second.Scalar();
      }
    }
    l.reject_unknown();
  }

  // The grid: one dimension per key given (shorthands included), the
  // defaults of the keys left out.
  const YamlFields grid = top.child("grid");
  struct Dimension {
    std::vector<std::string> keys;  // two for a shorthand
    std::vector<json> values;
  };
  std::vector<Dimension> dims;
  json defaults = json::object();
  for (const GridKey& k : kGridKeys) {
    const Shorthand* sh = nullptr;
    for (const Shorthand& s : kShorthands)
      if (k.name == std::string(s.prefill) || k.name == std::string(s.decode)) sh = &s;
    if (sh && grid.has(sh->name)) {
      if (grid.has(sh->prefill) || grid.has(sh->decode))
        throw DataError(fmt::format("{}: give either '{}' or '{}'/'{}', not both",
                                    grid.where(sh->name), sh->name, sh->prefill, sh->decode));
      if (k.name == std::string(sh->prefill))
        dims.push_back({{sh->prefill, sh->decode},
                        grid_values(grid, sh->name, fmt::format("grid.{}", sh->name), sh->kind)});
    } else if (grid.has(k.name)) {
      dims.push_back({{k.name}, grid_values(grid, k.name, fmt::format("grid.{}", k.name), k.kind)});
    } else if (k.fallback == nullptr) {
      throw DataError(fmt::format("{} is missing", grid.where(k.name)));
    } else {
      defaults[k.name] = scalar_value(k.kind, k.fallback, grid.where(k.name));
    }
  }
  grid.reject_unknown();

  // exclude: [{KEY: value or [values], ...}, ...] drops points matching every
  // key of one entry; a shorthand (ffn, attn) must match in both phases.
  std::vector<std::map<std::string, std::vector<json>>> excludes;
  if (top.has("exclude")) {
    const YAML::Node list = top.node("exclude");
    if (!list.IsSequence())
      throw DataError(fmt::format("{}: expected a list of maps", top.where("exclude")));
    for (size_t i = 0; i < list.size(); ++i) {
      if (!list[i].IsMap() || list[i].size() == 0)
        throw DataError(fmt::format("{}: key 'exclude[{}]': expected a map of grid keys to values",
                                    position(file, list[i]), i));
      const YamlFields entry(list[i], file, fmt::format("exclude[{}].", i));
      std::map<std::string, std::vector<json>> match;
      for (const auto& kv : list[i]) {
        const std::string key = kv.first.Scalar();
        const Shorthand* sh = shorthand(key);
        const GridKey* k = sh ? grid_key(sh->prefill) : grid_key(key);
        if (!k)
          throw DataError(fmt::format("{}: '{}' is not a grid key (known: {})", entry.where(key),
                                      key, known_grid_keys(true)));
        const auto values = grid_values(entry, key, fmt::format("exclude[{}].{}", i, key), k->kind);
        for (const std::string& target :
             sh ? std::vector<std::string>{sh->prefill, sh->decode} : std::vector<std::string>{key})
          match[target] = values;
      }
      excludes.push_back(match);
    }
  }
  std::vector<Rule> rules;
  if (top.has("where")) {
    const YAML::Node list = top.node("where");
    if (!list.IsSequence())
      throw DataError(fmt::format("{}: expected a list of rules", top.where("where")));
    for (size_t i = 0; i < list.size(); ++i) {
      const std::string at = fmt::format("{}: key 'where[{}]'", position(file, list[i]), i);
      if (!list[i].IsScalar()) throw DataError(fmt::format("{}: expected a rule string", at));
      rules.push_back(parse_rule(list[i].Scalar(), at));
    }
  }
  top.reject_unknown();

  // The cartesian product, first dimension slowest.
  std::vector<size_t> index(dims.size(), 0);
  std::vector<json> configs;
  for (bool more = true; more;) {
    json c = defaults;
    for (size_t d = 0; d < dims.size(); ++d)
      for (const std::string& key : dims[d].keys) c[key] = dims[d].values[index[d]];
    configs.push_back(c);
    more = false;
    for (size_t d = dims.size(); d-- > 0;) {
      if (++index[d] < dims[d].values.size()) {
        more = true;
        break;
      }
      index[d] = 0;
    }
  }

  std::vector<json> kept;
  for (json& c : configs) {
    // Filters see the chips a point runs on, so `chips: auto` with a mesh
    // is matched by its size.
    json resolved = c;
    if (c["chips"] == "auto") {
      int64_t chips = 1;
      if (c["mesh"] != "auto")
        chips = Mesh::parse(c["mesh"].get<std::string>()).tp_size() * c["pp"].get<int64_t>();
      resolved["chips"] = chips;
    }
    bool drop = false;
    for (const auto& match : excludes) {
      bool all = true;
      for (const auto& [key, values] : match)
        all = all && std::find(values.begin(), values.end(), resolved[key]) != values.end();
      drop = drop || all;
    }
    for (const Rule& r : rules) drop = drop || !r.holds(resolved);
    if (drop) {
      ++e.dropped;
      continue;
    }
    resolved["hardware"] = e.hardware;
    resolved["repetitions"] = e.repetitions;
    resolved["warmup"] = e.warmup;
    resolved["dry_run"] = dry_run;
    kept.push_back(resolved);
  }
  if (kept.empty())
    throw DataError(fmt::format("{}: exclude/where rules drop all {} points of the grid", file,
                                configs.size()));

  // Labels name the keys that vary, a layout once ("ffn=2d") where both
  // phases always share it.
  std::vector<std::pair<std::string, std::string>> varying;
  for (const GridKey& k : kGridKeys) {
    std::set<std::string> seen;
    bool phases_equal = true;
    const Shorthand* sh = nullptr;
    for (const Shorthand& s : kShorthands)
      if (k.name == std::string(s.prefill) || k.name == std::string(s.decode)) sh = &s;
    for (const json& c : kept) {
      seen.insert(c[k.name].dump());
      if (sh) phases_equal = phases_equal && c[sh->prefill] == c[sh->decode];
    }
    if (seen.size() < 2) continue;
    if (sh && phases_equal) {
      if (k.name == std::string(sh->prefill)) varying.push_back({sh->name, k.name});
      continue;
    }
    varying.push_back({k.name, k.name});
  }
  for (const json& c : kept) {
    SweepPoint p{c, fnv1a64_hex(c.dump()), point_label(c, varying), ""};
    const int64_t pp = c["pp"].get<int64_t>(), chips = c["chips"].get<int64_t>();
    if (c["mesh"] != "auto") {
      const Mesh m = Mesh::parse(c["mesh"].get<std::string>());
      if (m.tp_size() * pp != chips)
        p.invalid = fmt::format("mesh {} with pp={} uses {} chips, but the point has chips={}",
                                c["mesh"].get<std::string>(), pp, m.tp_size() * pp, chips);
    } else if (chips % pp) {
      p.invalid = fmt::format("pp={} does not divide chips={}", pp, chips);
    }
    e.points.push_back(p);
  }
  return e;
}

}  // namespace shardlm
