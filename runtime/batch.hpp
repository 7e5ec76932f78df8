#pragma once
// A forward pass runs a ragged batch: the new tokens of several sequences laid
// end to end. Prefill gives each sequence its whole prompt; a decode step gives
// each live sequence one token. Attention reads each sequence's own KV slot.
#include <cstdint>
#include <vector>

namespace shardlm {

struct Segment {
  int slot = 0;        // the sequence's KV-cache slot
  int start_pos = 0;   // position of its first new token (= tokens already cached)
  int num_tokens = 0;  // new tokens, stored consecutively in the activations
};

struct BatchLayout {
  std::vector<Segment> segments;
  std::vector<int32_t> positions;  // one per token, in activation order

  BatchLayout() = default;
  explicit BatchLayout(std::vector<Segment> segs) : segments(std::move(segs)) {
    for (const Segment& s : segments)
      for (int t = 0; t < s.num_tokens; ++t) positions.push_back(s.start_pos + t);
  }
  int64_t num_tokens() const { return int64_t(positions.size()); }
};

}  // namespace shardlm
