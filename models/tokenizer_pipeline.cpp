// Text through a Tokenizer's parts: normalisers, added tokens, pre-tokenizers,
// the BPE model and the post-processor's ids; ids back through the decoders;
// and the streaming decoder.
#include <fmt/format.h>
#include <utf8proc.h>

#include <algorithm>
#include <cctype>

#include "models/tokenizer_impl.hpp"
#include "models/utf8.hpp"
#include "runtime/errors.hpp"

namespace shardlm {
using namespace tokenizer_detail;
namespace {

// Turns a covering list of (segment, is_delimiter) into pieces, as Hugging
// Face's NormalizedString::split does for each behaviour.
void apply_behavior(const std::vector<std::tuple<size_t, size_t, bool>>& segments,
                    Behavior behavior, std::vector<std::pair<size_t, size_t>>& out) {
  out.clear();
  bool previous_match = false;
  switch (behavior) {
    case Behavior::kRemoved:
      for (const auto& [s, e, m] : segments)
        if (!m) out.emplace_back(s, e);
      break;
    case Behavior::kIsolated:
      for (const auto& [s, e, m] : segments) out.emplace_back(s, e);
      break;
    case Behavior::kMergedWithPrevious:
      for (const auto& [s, e, m] : segments) {
        if (m && !previous_match && !out.empty())
          out.back().second = e;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      break;
    case Behavior::kMergedWithNext:
      for (auto it = segments.rbegin(); it != segments.rend(); ++it) {
        const auto& [s, e, m] = *it;
        if (m && !previous_match && !out.empty())
          out.back().first = s;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      std::reverse(out.begin(), out.end());
      break;
    case Behavior::kContiguous:
      for (const auto& [s, e, m] : segments) {
        if (m == previous_match && !out.empty())
          out.back().second = e;
        else
          out.emplace_back(s, e);
        previous_match = m;
      }
      break;
  }
}

}  // namespace

std::string Tokenizer::Impl::normalize(std::string_view text) const {
  std::string s(text);
  for (const NormStep& step : normalizers) {
    switch (step.kind) {
      case NormKind::kNfc:
      case NormKind::kNfd:
      case NormKind::kNfkc:
      case NormKind::kNfkd: {
        // Text below U+0300 (ASCII, Latin-1, Latin Extended) is already in
        // NFC; skip the library call for it.
        if (step.kind == NormKind::kNfc &&
            std::none_of(s.begin(), s.end(), [](char c) { return (unsigned char)(c) >= 0xCC; }))
          break;
        int options = UTF8PROC_STABLE;
        if (step.kind == NormKind::kNfc || step.kind == NormKind::kNfkc)
          options |= UTF8PROC_COMPOSE;
        else
          options |= UTF8PROC_DECOMPOSE;
        if (step.kind == NormKind::kNfkc || step.kind == NormKind::kNfkd)
          options |= UTF8PROC_COMPAT;
        utf8proc_uint8_t* out = nullptr;
        const auto n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                    utf8proc_ssize_t(s.size()), &out, utf8proc_option_t(options));
        if (n < 0)
          throw DataError(fmt::format("{}: normalizer failed: {}", source, utf8proc_errmsg(n)));
        s.assign(reinterpret_cast<const char*>(out), size_t(n));
        free(out);
        break;
      }
      case NormKind::kPrepend:
        if (!s.empty()) s.insert(0, step.text);
        break;
      case NormKind::kReplace: {
        std::vector<std::pair<size_t, size_t>> matches;
        step.pattern->find_all(s, matches);
        if (matches.empty()) break;
        std::string out;
        size_t last = 0;
        for (const auto& [b, e] : matches) {
          out.append(s, last, b - last);
          out += step.text;
          last = e;
        }
        out.append(s, last);
        s = std::move(out);
        break;
      }
    }
  }
  return s;
}

void Tokenizer::Impl::pre_tokenize(std::deque<std::string>& arena,
                                   std::vector<Piece>& pieces) const {
  std::vector<Piece> next;
  std::vector<std::pair<size_t, size_t>> matches, parts;
  std::vector<std::tuple<size_t, size_t, bool>> segments;
  // Splits every piece at the delimiters `find` reports, with `behavior`.
  auto split_all = [&](auto&& find, Behavior behavior, bool invert, bool map) {
    next.clear();
    for (const Piece& p : pieces) {
      matches.clear();
      find(p.text, matches);
      segments.clear();
      size_t prev = 0;
      for (const auto& [s, e] : matches) {
        if (prev != s) segments.emplace_back(prev, s, invert);
        segments.emplace_back(s, e, !invert);
        prev = e;
      }
      if (prev != p.text.size()) segments.emplace_back(prev, p.text.size(), invert);
      apply_behavior(segments, behavior, parts);
      for (const auto& [s, e] : parts)
        if (e > s) next.push_back({p.text.substr(s, e - s), p.at_start && s == 0, p.mapped || map});
    }
    pieces.swap(next);
  };
  auto each_char = [](auto&& predicate) {
    return [predicate](std::string_view text, std::vector<std::pair<size_t, size_t>>& out) {
      size_t i = 0;
      while (i < text.size()) {
        uint32_t cp;
        const int len = std::max(1, utf8::decode(text.substr(i), cp));
        if (predicate(cp)) out.emplace_back(i, i + size_t(len));
        i += size_t(len);
      }
    };
  };
  for (const PreStep& step : pre_tokenizers) {
    switch (step.kind) {
      case PreKind::kByteLevel: {
        if (step.add_prefix_space)
          for (Piece& p : pieces) {
            // Prepending to nothing adds nothing, as in Hugging Face.
            if (p.text.empty() || p.text.starts_with(' ')) continue;
            std::string& spaced = arena.emplace_back();
            spaced.reserve(p.text.size() + 1);
            spaced += ' ';
            spaced += p.text;
            p.text = spaced;
          }
        if (step.use_regex) {
          split_all([&](std::string_view t, auto& out) { step.pattern->find_all(t, out); },
                    Behavior::kIsolated, false, true);
        } else {
          for (Piece& p : pieces) p.mapped = true;
        }
        break;
      }
      case PreKind::kSplit:
        split_all([&](std::string_view t, auto& out) { step.pattern->find_all(t, out); },
                  step.behavior, step.invert, false);
        break;
      case PreKind::kMetaspace: {
        for (Piece& p : pieces) {
          std::string s;
          s.reserve(p.text.size() + 3);
          for (char c : p.text) {
            if (c == ' ')
              s += step.replacement;
            else
              s += c;
          }
          const bool prepend =
              step.prepend == Prepend::kAlways || (step.prepend == Prepend::kFirst && p.at_start);
          if (prepend && !s.empty() && !s.starts_with(step.replacement))
            s.insert(0, step.replacement);
          p.text = arena.emplace_back(std::move(s));
        }
        if (step.split)
          split_all(
              [&](std::string_view t, auto& out) {
                for (size_t at = t.find(step.replacement); at != std::string_view::npos;
                     at = t.find(step.replacement, at + step.replacement.size()))
                  out.emplace_back(at, at + step.replacement.size());
              },
              Behavior::kMergedWithNext, false, false);
        break;
      }
      case PreKind::kDigits:
        split_all(each_char([](uint32_t cp) { return utf8::is_numeric(cp); }),
                  step.individual_digits ? Behavior::kIsolated : Behavior::kContiguous, false,
                  false);
        break;
    }
  }
}

std::vector<int32_t> Tokenizer::Impl::encode(std::string_view text, bool add_special) const {
  if (const auto bad = utf8::first_invalid(text))
    throw DataError(fmt::format("the text is not valid UTF-8 (byte {})", *bad));
  std::vector<int32_t> ids;
  if (add_special) ids = prefix_ids;
  std::vector<std::tuple<int32_t, size_t, size_t>> raw_parts, norm_parts;
  std::deque<std::string> arena;
  std::vector<Piece> pieces;
  raw_added.split(text, raw_parts);
  for (const auto& [id, start, end] : raw_parts) {
    if (id >= 0) {
      ids.push_back(id);
      continue;
    }
    const std::string_view raw = text.substr(start, end - start);
    std::string_view normalized = raw;
    if (!normalizers.empty()) normalized = arena.emplace_back(normalize(raw));
    normalized_added.split(normalized, norm_parts);
    for (const auto& [nid, nstart, nend] : norm_parts) {
      if (nid >= 0) {
        ids.push_back(nid);
        continue;
      }
      pieces.clear();
      pieces.push_back(
          {normalized.substr(nstart, nend - nstart), start == 0 && nstart == 0, false});
      pre_tokenize(arena, pieces);
      for (const Piece& p : pieces) bpe->tokenize(p.text, p.mapped, ids);
    }
  }
  if (add_special) ids.insert(ids.end(), suffix_ids.begin(), suffix_ids.end());
  return ids;
}

std::string Tokenizer::Impl::decode_bytes(std::span<const int32_t> ids, bool skip_special,
                                          bool drop_unknown) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string* t = token(ids[i]);
    if (!t) {
      if (drop_unknown) continue;
      throw DataError(
          fmt::format("token id {} (position {}) is not in the vocabulary of {} "
                      "(ids 0 to {})",
                      ids[i], i, source, int64_t(has_token.size()) - 1));
    }
    if (skip_special && special[size_t(ids[i])]) continue;
    const auto form = decode_form.find(ids[i]);
    tokens.push_back(form == decode_form.end() ? *t : form->second);
  }
  if (!has_decoder) {
    std::string out;
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
    return out;
  }
  for (const DecStep& step : decoders) {
    switch (step.kind) {
      case DecKind::kByteLevel: {
        // Each token's characters back to bytes; a token with a character
        // outside the mapping (an added token) passes through as it is.
        std::string bytes;
        for (const std::string& t : tokens) {
          std::string mapped;
          bool all = true;
          for (size_t i = 0; i < t.size() && all;) {
            uint32_t cp;
            const int len = utf8::decode(std::string_view(t).substr(i), cp);
            if (len <= 0 || cp >= char_to_byte.size() || char_to_byte[cp] < 0) {
              all = false;
            } else {
              mapped += char(char_to_byte[cp]);
              i += size_t(len);
            }
          }
          bytes += all ? mapped : t;
        }
        tokens.assign(1, std::move(bytes));
        break;
      }
      case DecKind::kMetaspace:
        for (size_t i = 0; i < tokens.size(); ++i) {
          std::string out;
          const std::string& t = tokens[i];
          for (size_t at = 0; at < t.size();) {
            if (t.compare(at, step.from.size(), step.from) == 0) {
              if (!(i == 0 && step.prepend != Prepend::kNever)) out += ' ';
              at += step.from.size();
            } else {
              out += t[at++];
            }
          }
          tokens[i] = std::move(out);
        }
        break;
      case DecKind::kReplace:
        for (std::string& t : tokens) {
          std::string out;
          for (size_t at = 0; at < t.size();) {
            if (t.compare(at, step.from.size(), step.from) == 0) {
              out += step.to;
              at += step.from.size();
            } else {
              out += t[at++];
            }
          }
          t = std::move(out);
        }
        break;
      case DecKind::kByteFallback: {
        // Runs of <0xXX> tokens become their bytes when those are UTF-8, or
        // one U+FFFD per byte when not (Hugging Face's rule).
        std::vector<std::string> out;
        std::string run;
        size_t run_tokens = 0;
        auto flush = [&] {
          if (run_tokens == 0) return;
          if (utf8::first_invalid(run)) {
            std::string replacement;
            for (size_t k = 0; k < run_tokens; ++k) replacement += "\xEF\xBF\xBD";
            out.push_back(std::move(replacement));
          } else {
            out.push_back(run);
          }
          run.clear();
          run_tokens = 0;
        };
        for (std::string& t : tokens) {
          if (t.size() == 6 && t.starts_with("<0x") && t.back() == '>' &&
              std::isxdigit(static_cast<unsigned char>(t[3])) &&
              std::isxdigit(static_cast<unsigned char>(t[4]))) {
            run += char(std::stoi(t.substr(3, 2), nullptr, 16));
            ++run_tokens;
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        tokens = std::move(out);
        break;
      }
      case DecKind::kFuse: {
        std::string all;
        for (const std::string& t : tokens) all += t;
        tokens.assign(1, std::move(all));
        break;
      }
      case DecKind::kStrip:
        for (std::string& t : tokens) {
          size_t begin = 0, end = t.size();
          for (int64_t k = 0;
               k < step.start && t.compare(begin, step.strip.size(), step.strip) == 0; ++k)
            begin += step.strip.size();
          for (int64_t k = 0;
               k < step.stop && end >= begin + step.strip.size() &&
               t.compare(end - step.strip.size(), step.strip.size(), step.strip) == 0;
               ++k)
            end -= step.strip.size();
          t = t.substr(begin, end - begin);
        }
        break;
    }
  }
  std::string out;
  for (const std::string& t : tokens) out += t;
  return out;
}

TextStream::TextStream(const Tokenizer& tokenizer, bool skip_special_tokens, bool drop_unknown)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens), drop_unknown_(drop_unknown) {}

std::string TextStream::push(int32_t id) {
  const Tokenizer::Impl& impl = *tokenizer_.impl_;
  ids_.push_back(id);
  // A trailing run of byte-fallback tokens can still turn into U+FFFDs, and
  // trailing characters a Strip decoder removes can still be kept: neither
  // is final yet.
  size_t settled = ids_.size();
  if (impl.byte_fallback_decoder)
    while (settled > 0) {
      const std::string* t = impl.token(ids_[settled - 1]);
      if (!t || !(t->size() == 6 && t->starts_with("<0x") && t->back() == '>')) break;
      --settled;
    }
  std::string bytes =
      impl.decode_bytes(std::span(ids_).first(settled), skip_special_, drop_unknown_);
  size_t safe = bytes.size();
  for (int64_t k = 0; k < impl.strip_stop && safe > 0; ++k) {
    --safe;
    while (safe > 0 && (static_cast<unsigned char>(bytes[safe]) & 0xC0) == 0x80) --safe;
  }
  safe -= utf8::incomplete_tail(std::string_view(bytes).substr(0, safe));
  if (safe <= emitted_.size() || bytes.compare(0, emitted_.size(), emitted_) != 0) return "";
  std::string fresh = bytes.substr(emitted_.size(), safe - emitted_.size());
  emitted_.append(fresh);
  return utf8::lossy(fresh);
}

std::string TextStream::finish() {
  const std::string bytes = tokenizer_.impl_->decode_bytes(ids_, skip_special_, drop_unknown_);
  const std::string shown = utf8::lossy(emitted_);
  const std::string all = utf8::lossy(bytes);
  // `emitted_` is a prefix of `bytes` that ends where no later byte changes
  // its lossy form, so `shown` is a prefix of `all`.
  emitted_ = bytes;
  return all.starts_with(shown) ? all.substr(shown.size()) : std::string();
}

}  // namespace shardlm
