// The engine's side of decode steps as graphs (Engine::run_step_graph), on
// the CPU: a backend that computes with the CPU backend but answers the
// step-graph calls as the CUDA backend does per key (measure, capture, then
// replay) and abandons one replay, as the CUDA backend does when a step
// differs from its capture. The tokens must be a plain run's, only decode
// steps may be offered, keyed by their sequences, and the abandoned step must
// run again eagerly with its key starting over.
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <vector>

#include "collectives/world.hpp"
#include "models/model_weights.hpp"
#include "models/presets.hpp"
#include "models/random_checkpoint.hpp"
#include "models/safetensors.hpp"
#include "partitioning/layouts.hpp"
#include "runtime/engine.hpp"

using namespace shardlm;

namespace {

// The CPU backend's results, a device backend's answers to the step-graph
// calls. Its operations always run (it has no graph to skip them into), so
// a step run again after an abandoned replay computes the same values.
class GraphAnsweringBackend final : public Backend {
 public:
  explicit GraphAnsweringBackend(int abandon_replay) : abandon_replay_(abandon_replay) {}

  std::vector<std::vector<int64_t>> keys;  // each step offered, in order
  std::vector<std::string> abandoned;      // why, for each abandoned step

  Device device() const override { return Device::CUDA; }
  std::string describe() const override { return "cpu answering as a graph backend"; }
  DType kv_dtype() const override { return cpu_->kv_dtype(); }
  Tensor alloc(const Shape& shape, DType dtype) override { return cpu_->alloc(shape, dtype); }
  Tensor alloc_kv_cache(const Shape& shape) override { return cpu_->alloc_kv_cache(shape); }
  Tensor zeros(const Shape& shape, DType dtype) override { return cpu_->zeros(shape, dtype); }
  Tensor upload_weight(const void* host, DType src_dtype, const Shape& full_shape,
                       const Block2D& block) override {
    return cpu_->upload_weight(host, src_dtype, full_shape, block);
  }
  void copy_from_host(const float* src, const Tensor& dst) override {
    cpu_->copy_from_host(src, dst);
  }
  void copy_to_host(const Tensor& src, float* dst) override { cpu_->copy_to_host(src, dst); }
  void copy_2d(const Tensor& src, int64_t src_row, int64_t src_col, const Tensor& dst,
               int64_t dst_row, int64_t dst_col, int64_t rows, int64_t cols) override {
    cpu_->copy_2d(src, src_row, src_col, dst, dst_row, dst_col, rows, cols);
  }
  void embedding(const Tensor& table, const int32_t* ids, const Tensor& out) override {
    cpu_->embedding(table, ids, out);
  }
  void row_sum_squares(const Tensor& x, const Tensor& sums) override {
    cpu_->row_sum_squares(x, sums);
  }
  void add_and_sum_squares(const Tensor& x, const Tensor& inout, const Tensor& sums) override {
    cpu_->add_and_sum_squares(x, inout, sums);
  }
  void rmsnorm_scale(const Tensor& x, const Tensor& sums, int64_t width, const Tensor& weight,
                     float eps, const Tensor& out) override {
    cpu_->rmsnorm_scale(x, sums, width, weight, eps, out);
  }
  void matmul(const Tensor& x, const Tensor& w, const Tensor& out, bool accumulate) override {
    cpu_->matmul(x, w, out, accumulate);
  }
  void rope(const Tensor& x, int head_dim, const int32_t* positions, const Tensor& cos,
            const Tensor& sin) override {
    cpu_->rope(x, head_dim, positions, cos, sin);
  }
  void silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    cpu_->silu_mul(gate, up, out);
  }
  void add(const Tensor& x, const Tensor& inout) override { cpu_->add(x, inout); }
  void add_bias(const Tensor& bias, const Tensor& inout) override { cpu_->add_bias(bias, inout); }
  void kv_write(const Tensor& k, const Tensor& v, const KVCacheLayer& cache,
                const BatchLayout& batch) override {
    cpu_->kv_write(k, v, cache, batch);
  }
  void attention(const Tensor& q, const KVCacheLayer& cache, const BatchLayout& batch,
                 const AttentionHeads& heads, const Tensor& out) override {
    cpu_->attention(q, cache, batch, heads, out);
  }
  void sample(const Tensor& logits, const SamplingParams& params, const double* uniforms,
              int32_t* ids) override {
    REQUIRE(mode_ == StepGraphMode::kEager);  // launched before the results are read
    cpu_->sample(logits, params, uniforms, ids);
  }

  StepGraphMode begin_step_graph(const std::vector<int64_t>& key) override {
    keys.push_back(key);
    const int seen = seen_[key]++;
    mode_ = seen == 0   ? StepGraphMode::kMeasure
            : seen == 1 ? StepGraphMode::kCapture
                        : StepGraphMode::kReplay;
    if (mode_ == StepGraphMode::kReplay) ++replays_;
    return mode_;
  }
  void launch_step_graph() override {
    const bool abandon = mode_ == StepGraphMode::kReplay && replays_ == abandon_replay_;
    mode_ = StepGraphMode::kEager;
    if (abandon) throw StepGraphAbandoned("the step differs from its capture (test)");
  }
  void abandon_step_graph(const std::string& why, bool for_good) override {
    CHECK_FALSE(for_good);
    abandoned.push_back(why);
    seen_[keys.back()] = 0;  // measured again at its next step
    mode_ = StepGraphMode::kEager;
  }
  bool replaying_step() const override { return mode_ == StepGraphMode::kReplay; }

 private:
  std::unique_ptr<Backend> cpu_ = make_cpu_backend(1);
  int abandon_replay_;
  int replays_ = 0;
  std::map<std::vector<int64_t>, int> seen_;
  StepGraphMode mode_ = StepGraphMode::kEager;
};

struct TinyModel {
  ModelConfig config = *find_preset("tiny");
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / "shardlm_test_engine_step_graphs";
  TinyModel() { write_random_checkpoint(config, dir, {}); }
  ~TinyModel() { std::filesystem::remove_all(dir); }

  GenerationResult generate(Backend& backend, const GenerationRequest& request) const {
    ParallelContext ctx(World::get(), Mesh{});
    const LayoutShape shape{config.num_heads, config.num_kv_heads, config.parallel_block, true};
    const Layout layout = make_layout(FfnLayout::k2D, AttnLayout::kHeads, shape, Mesh{});
    const Checkpoint checkpoint(dir);
    ModelWeights weights = load_model_weights(checkpoint, config, backend, layout, ctx,
                                              {0, config.num_layers, true, true});
    Engine engine(backend, ctx, config, layout, layout, std::move(weights));
    return engine.generate(request);
  }
};

}  // namespace

TEST_CASE("decode steps are offered as graphs by sequence set and rerun when abandoned",
          "[engine][step_graphs]") {
  const TinyModel model;
  GenerationRequest request;
  request.prompts = {{5, 17, 300, 42}, {7, 99, 1000, 3, 11, 12}};
  request.max_new_tokens = 6;  // 5 decode steps
  request.keep_step_logits = true;

  auto cpu = make_cpu_backend(1);
  request.step_graphs = true;  // a CPU backend is never offered graphs
  const GenerationResult plain = model.generate(*cpu, request);
  CHECK_FALSE(plain.step_graphs);
  CHECK(plain.graph_steps_captured + plain.graph_steps_replayed + plain.graph_steps_eager == 0);

  // Steps 1-5 of the one key {0, 1}: measure, capture, replay, replay
  // (abandoned: run eagerly, the key starts over), measure.
  GraphAnsweringBackend graphs(/*abandon_replay=*/2);
  const GenerationResult r = model.generate(graphs, request);
  CHECK(r.generated == plain.generated);
  CHECK(r.step_logits == plain.step_logits);
  CHECK(r.step_graphs);
  CHECK(graphs.keys == std::vector<std::vector<int64_t>>(5, {0, 1}));
  CHECK(graphs.abandoned.size() == 1);
  CHECK(r.graph_steps_captured == 1);
  CHECK(r.graph_steps_replayed == 1);
  CHECK(r.graph_steps_eager == 3);

  request.step_graphs = false;
  GraphAnsweringBackend off(/*abandon_replay=*/0);
  const GenerationResult eager = model.generate(off, request);
  CHECK(off.keys.empty());
  CHECK(eager.generated == plain.generated);
}
