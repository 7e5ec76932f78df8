#include "models/model_weights.hpp"

#include <fmt/format.h>

#include <map>

#include "models/llama_weights.hpp"
#include "runtime/errors.hpp"
#include "runtime/parallel.hpp"

namespace shardlm {
void check_shardable(const ModelConfig& c, const Mesh& mesh, const Layout& prefill,
                     const Layout& decode) {
  std::vector<std::string> problems;
  auto need = [&](int64_t value, const char* what, const std::string& axes,
                  const std::string& why) {
    const int parts = mesh.axes_size(axes);
    if (value % parts != 0)
      problems.push_back(fmt::format("{} = {} does not divide into the {} parts of axes '{}' ({})",
                                     what, value, parts, axes, why));
  };
  for (const Layout* l : {&prefill, &decode}) {
    const PhaseAxes a = PhaseAxes::from_layout(*l);
    const std::string where = fmt::format("{} layout", name(l->ffn));
    need(c.hidden_size, "hidden_size", a.residual_e, where + ", residual stream E");
    need(c.hidden_size, "hidden_size", a.embedding_e, "embedding table E");
    need(c.intermediate_size, "intermediate_size", a.uf + a.ue, where + ", feed-forward F");
    need(c.num_heads, "num_attention_heads", a.heads, where + ", query heads");
    need(c.num_heads, "num_attention_heads", stored_axes(*l, WeightRole::kWq).first,
         "stored W_q heads");
    need(c.vocab_size, "vocab_size", a.vocab, "LM head vocabulary");
  }
  for (const std::string& d : storage_differences(prefill, decode, mesh))
    problems.push_back(fmt::format("{}; {}", d, kShareStorageAdvice));
  if (!problems.empty()) {
    std::string message =
        fmt::format("cannot shard the model on mesh {} ({} ranks):", mesh.str(), mesh.size());
    for (const std::string& p : problems) message += "\n  " + p;
    throw UsageError(message);
  }
}

ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                Backend& backend, const Layout& layout, const ParallelContext& ctx,
                                const WeightsPart& part) {
  // Validate everything before the first (slow) upload, so a bad checkpoint fails fast.
  std::map<std::string, const TensorRecord*> records;
  for (const WeightSpec& spec : checkpoint_weights(config)) {
    if (spec.kind == WeightKind::Bias && !checkpoint.contains(spec.name))
      throw DataError(fmt::format(
          "{}: tensor \"{}\" is missing from the checkpoint, but the config says the model has "
          "this bias ({})",
          checkpoint.dir().string(), spec.name, bias_rule(spec.name, config)));
    records[spec.name] = &checkpoint.tensor(spec.name, spec.shape);
  }
  check_unused_tensors(checkpoint.records(), config, checkpoint.dir().string(), ctx.is_root());

  auto upload_full = [&](const std::string& name) {
    if (!records.count(name)) return Tensor();  // a bias the model does not have
    const TensorRecord& r = *records.at(name);
    const Tensor t = backend.upload_weight(r.data, *r.dtype, r.shape, {0, 1, 0, r.shape[0]});
    release_pages(r);
    return t;
  };
  auto upload = [&](const std::string& name, WeightRole role) {
    const TensorRecord& r = *records.at(name);
    auto [row_axes, col_axes] = stored_axes(layout, role);
    const auto rows = ctx.block(r.shape[0], row_axes), cols = ctx.block(r.shape[1], col_axes);
    WeightShard shard{backend.upload_weight(r.data, *r.dtype, r.shape,
                                            {rows.first, rows.second - rows.first, cols.first,
                                             cols.second - cols.first}),
                      row_axes, col_axes};
    release_pages(r);
    return shard;
  };
  ModelWeights w;
  // The vocabulary tables first: a tensor's mapped pages count towards the
  // peak resident memory until they are released after its copy, so the
  // largest tensors are copied while little else is resident.
  if (part.embedding) w.embed_tokens = upload(kEmbedTokens, WeightRole::kEmbedding);
  if (part.head) {
    w.lm_head = upload(config.tie_word_embeddings ? kEmbedTokens : kLmHead, WeightRole::kLmHead);
    w.final_norm = upload_full(kFinalNorm);
  }
  for (int layer = int(part.first_layer); layer < int(part.end_layer); ++layer) {
    const LayerWeightNames n = layer_weight_names(layer);
    LayerWeights& l = w.layers.emplace_back();
    l.input_norm = upload_full(n.input_norm);
    if (!config.parallel_block) l.post_attention_norm = upload_full(n.post_attention_norm);
    l.q = upload(n.q, WeightRole::kWq);
    l.k = upload(n.k, WeightRole::kWk);
    l.v = upload(n.v, WeightRole::kWv);
    l.o = upload(n.o, WeightRole::kWo);
    l.gate = upload(n.gate, WeightRole::kWGate);
    l.up = upload(n.up, WeightRole::kWUp);
    l.down = upload(n.down, WeightRole::kWDown);
    l.q_bias = upload_full(n.q_bias);
    l.k_bias = upload_full(n.k_bias);
    l.v_bias = upload_full(n.v_bias);
    l.o_bias = upload_full(n.o_bias);
    l.gate_bias = upload_full(n.gate_bias);
    l.up_bias = upload_full(n.up_bias);
    l.down_bias = upload_full(n.down_bias);
  }
  return w;
}

}  // namespace shardlm
