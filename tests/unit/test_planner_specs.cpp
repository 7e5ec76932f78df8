// Hardware and model specs from YAML: shipped files load, counts match the
// paper, presets match make-model's, and bad files name the file and key.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "models/presets.hpp"
#include "partitioning/hardware.hpp"
#include "partitioning/model_spec.hpp"
#include "runtime/errors.hpp"

using namespace shardlm;
namespace fs = std::filesystem;

namespace {
const std::string kRoot = SHARDLM_SOURCE_DIR;

std::string write_temp(const std::string& name, const std::string& text) {
  const fs::path p = fs::temp_directory_path() / ("shardlm_test_" + name);
  std::ofstream(p) << text;
  return p.string();
}

std::string load_error(const std::string& file, bool hardware) {
  try {
    if (hardware)
      HardwareSpec::load(file);
    else
      ModelSpec::load_yaml(file);
  } catch (const DataError& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("every shipped hardware and model spec loads", "[specs]") {
  int hardware = 0, models = 0;
  for (const auto& e : fs::directory_iterator(kRoot + "/configs/hardware")) {
    const HardwareSpec h = HardwareSpec::load(e.path().string());
    CHECK(h.name == e.path().stem().string());
    ++hardware;
  }
  for (const auto& e : fs::directory_iterator(kRoot + "/configs/models")) {
    const ModelSpec m = ModelSpec::load_yaml(e.path().string());
    CHECK(m.name == e.path().stem().string());
    ++models;
  }
  CHECK(hardware >= 4);
  CHECK(models >= 16);
}

TEST_CASE("TPU v4 constants are the paper's", "[specs]") {
  const HardwareSpec h = HardwareSpec::load(kRoot + "/configs/hardware/tpu-v4.yaml");
  CHECK(h.peak("bf16") == 275e12);
  CHECK(h.memory_bandwidth == 1.2e12);
  CHECK(h.memory_bytes == 32.0 * (1 << 30));
  // 270 GB/s per chip: all six links of the 3D torus. The paper's model
  // (bandwidth_per: chip) gives it to every collective; the shipped spec
  // prices the links of each collective's own axes (test_planner_topology).
  HardwareSpec paper = h;
  paper.torus_per_axis = false;
  CHECK(paper.collective_bandwidth(Mesh{1, 4, 4, 4}, "xyz") == Approx(270e9));
  CHECK(paper.collective_bandwidth(Mesh{1, 4, 4, 4}, "x") == Approx(270e9));
  CHECK(h.link_bandwidth * h.links_per_axis * 3 == Approx(270e9));
  // Per axis: one wrapped axis of the 4x4x4 torus has its two links, 90 GB/s.
  CHECK(h.collective_bandwidth(Mesh{1, 4, 4, 4}, "x") == Approx(90e9));
}

TEST_CASE("switched networks slow down where a group leaves the node", "[specs]") {
  const HardwareSpec h = HardwareSpec::load(kRoot + "/configs/hardware/h100-sxm.yaml");
  const Mesh m{1, 8, 2, 1};  // x within a node of 8, y across nodes
  CHECK_FALSE(h.group_spans_nodes(m, "x"));
  CHECK(h.group_spans_nodes(m, "y"));
  CHECK(h.collective_bandwidth(m, "x") == h.intra_node_bandwidth);
  // 16 members on 2 nodes: 8 network cards per node carry the crossing traffic.
  CHECK(h.collective_bandwidth(m, "xy") ==
        Approx(std::min(h.intra_node_bandwidth, 8 * h.inter_node_bandwidth)));
  CHECK(h.collective_bandwidth(m, "y") == Approx(h.inter_node_bandwidth));  // one member per node
}

TEST_CASE("PaLM parameter counts, with and without the 48 -> 64 head padding", "[specs]") {
  const ModelSpec m = ModelSpec::load_yaml(kRoot + "/configs/models/palm-540b.yaml");
  // PAPER_NOTES §6.2: 118 * (3EF + 2*E*48*256 + 2*E*256) + 256128*E = 540.4e9
  CHECK(m.mfu_params() / 1e9 == Approx(540.4).epsilon(0.001));
  // §4: padding adds 118 * 2 * 18432 * 16 * 256 = 17.8e9 parameters.
  CHECK(m.num_params() - m.mfu_params() == 118LL * 2 * 18432 * 16 * 256);
  CHECK(m.attention_kind() == "MQA");
  CHECK(ModelSpec::load_yaml(kRoot + "/configs/models/palm-62b.yaml").num_params() / 1e9 ==
        Approx(62.5).epsilon(0.005));
  CHECK(ModelSpec::load_yaml(kRoot + "/configs/models/palm-8b.yaml").num_params() / 1e9 ==
        Approx(8.63).epsilon(0.005));
  CHECK(ModelSpec::load_yaml(kRoot + "/configs/models/llama2-70b.yaml").num_params() / 1e9 ==
        Approx(68.98).epsilon(0.002));
}

TEST_CASE("model YAMLs of the make-model presets match the presets", "[specs]") {
  for (const char* name : {"tiny", "tiny-mha", "tiny-mqa", "tiny-parallel", "small", "1b"}) {
    INFO(name);
    const auto preset = find_preset(name);
    REQUIRE(preset.has_value());
    const ModelConfig& y = ModelSpec::load_yaml(kRoot + "/configs/models/" + name + ".yaml").config;
    CHECK(y.hidden_size == preset->hidden_size);
    CHECK(y.intermediate_size == preset->intermediate_size);
    CHECK(y.num_layers == preset->num_layers);
    CHECK(y.num_heads == preset->num_heads);
    CHECK(y.num_kv_heads == preset->num_kv_heads);
    CHECK(y.head_dim == preset->head_dim);
    CHECK(y.vocab_size == preset->vocab_size);
    CHECK(y.parallel_block == preset->parallel_block);
    CHECK(y.tie_word_embeddings == preset->tie_word_embeddings);
    CHECK(y.num_params() == preset->num_params());
  }
}

TEST_CASE("bad spec files name the file, the key and what was expected", "[specs]") {
  const std::string hw_missing =
      write_temp("hw1.yaml", "name: x\npeak_flops: {bf16: 1e12}\nchips_per_node: 1\n");
  std::string msg = load_error(hw_missing, true);
  CHECK_THAT(msg, Catch::Contains(hw_missing));
  CHECK_THAT(msg, Catch::Contains("'memory'"));
  CHECK_THAT(msg, Catch::Contains("missing"));

  const std::string hw_typo =
      write_temp("hw2.yaml",
                 "name: x\npeak_flops: {bf16: fast}\nmemory: {capacity_bytes: 1e9, bandwidth_Bps: "
                 "1e9}\nchips_per_node: 1\n"
                 "interconnect: {topology: torus, link_bandwidth_Bps: 1e9}\n");
  msg = load_error(hw_typo, true);
  CHECK_THAT(msg, Catch::Contains("peak_flops.bf16"));
  CHECK_THAT(msg, Catch::Contains("expected a number"));

  const std::string model_bad = write_temp("m1.yaml",
                                           "name: m\nhidden_size: 64\nintermediate_size: "
                                           "128\nnum_layers: 2\nnum_heads: 4\nnum_kv_heads: 3\n"
                                           "vocab_size: 10\nmax_position_embeddings: 16\n");
  msg = load_error(model_bad, false);
  CHECK_THAT(msg, Catch::Contains("num_kv_heads"));
  CHECK_THAT(msg, Catch::Contains("multiple"));

  const std::string model_typo =
      write_temp("m2.yaml",
                 "name: m\nhidden_size: 64\nintermediate_size: 128\nnum_layers: 2\nnum_heads: 4\n"
                 "vocab_size: 10\nmax_position_embeddings: 16\nparalel_block: true\n");
  msg = load_error(model_typo, false);
  CHECK_THAT(msg, Catch::Contains("'paralel_block'"));
  CHECK_THAT(msg, Catch::Contains("unknown"));

  const std::string hw_slice =
      write_temp("hw3.yaml",
                 "name: x\npeak_flops: {bf16: 1e12}\nmemory: {capacity_bytes: 1e9, bandwidth_Bps: "
                 "1e9}\nchips_per_node: 1\n"
                 "interconnect: {topology: torus, link_bandwidth_Bps: 1e9, slices: [4x4]}\n");
  msg = load_error(hw_slice, true);
  CHECK_THAT(msg, Catch::Contains(hw_slice));
  CHECK_THAT(msg, Catch::Contains("slices"));
  CHECK_THAT(msg, Catch::Contains("AxBxC"));

  CHECK_THAT(load_error("/nonexistent/h.yaml", true), Catch::Contains("no such file"));
  CHECK_THROWS_AS(resolve_config("no-such-chip", "hardware"), DataError);
}

TEST_CASE("a Hugging Face model directory is read through ModelConfig::load", "[specs]") {
  const fs::path dir = fs::temp_directory_path() / "shardlm_test_hf_model";
  fs::create_directories(dir);
  std::ofstream(dir / "config.json")
      << R"({"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
             "num_attention_heads": 8, "num_key_value_heads": 2, "vocab_size": 32000,
             "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
             "tie_word_embeddings": false})";
  const ModelSpec m = ModelSpec::resolve(dir.string());
  CHECK(m.config.num_kv_heads == 2);
  CHECK(m.config.head_dim == 32);
  CHECK(m.attention_kind() == "GQA");
  CHECK(m.gated_ffn);
  CHECK(m.num_params() == m.config.num_params());
  CHECK(m.mfu_params() == m.num_params());
}
