#include "models/model_weights.hpp"

#include <map>

#include "models/llama_weights.hpp"

namespace shardlm {

ModelWeights load_model_weights(const Checkpoint& checkpoint, const ModelConfig& config,
                                Backend& backend) {
  // Validate everything before the first (slow) upload, so a bad checkpoint fails fast.
  std::map<std::string, const TensorRecord*> records;
  for (const WeightSpec& spec : checkpoint_weights(config))
    records[spec.name] = &checkpoint.tensor(spec.name, spec.shape);

  auto upload = [&](const std::string& name) {
    const TensorRecord& r = *records.at(name);
    return backend.upload_weight(r.data, *r.dtype, r.shape);
  };
  ModelWeights w;
  w.embed_tokens = upload(kEmbedTokens);
  for (int layer = 0; layer < config.num_layers; ++layer) {
    const LayerWeightNames n = layer_weight_names(layer);
    LayerWeights& l = w.layers.emplace_back();
    l.input_norm = upload(n.input_norm);
    if (!config.parallel_block) l.post_attention_norm = upload(n.post_attention_norm);
    l.q = upload(n.q);
    l.k = upload(n.k);
    l.v = upload(n.v);
    l.o = upload(n.o);
    l.gate = upload(n.gate);
    l.up = upload(n.up);
    l.down = upload(n.down);
  }
  w.final_norm = upload(kFinalNorm);
  w.lm_head = config.tie_word_embeddings ? w.embed_tokens : upload(kLmHead);
  return w;
}

}  // namespace shardlm
