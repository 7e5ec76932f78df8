#pragma once
// The tokenizer `make-model` writes beside its random weights: a byte-level
// BPE (GPT-2's pre-tokenizer and decoder) trained on a built-in English text,
// so that a random checkpoint takes and prints text through the same path a
// real one does. Its merges are learnt from that text, then extended with
// joins of learnt word pieces until the vocabulary fills the model's
// embedding rows: every id the model can sample decodes to text.
#include <filesystem>

#include "models/model_config.hpp"

namespace shardlm {

// Writes tokenizer.json and tokenizer_config.json into `dir`, each whole or
// not at all. Ids 0, 1, 2 are <unk>, <s> (BOS, added by encode) and </s> (EOS).
void write_demo_tokenizer(const ModelConfig& config, const std::filesystem::path& dir);

}  // namespace shardlm
