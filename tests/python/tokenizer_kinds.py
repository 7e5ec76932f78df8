"""Tokenizers of each family shardlm reads, trained with the `tokenizers`
library on the committed corpus (no download), saved as tokenizer.json.

Each kind mirrors the tokenizer.json layout of a real family:
  gpt2     ByteLevel pre-tokenizer with GPT-2's regex, ByteLevel decoder
  llama3   Split(Llama 3 regex) + ByteLevel, ignore_merges, BOS template
  qwen2    NFC normaliser, Split(Qwen2 regex) + ByteLevel
  llama2   Prepend("▁") + Replace(" ", "▁") normalisers, byte fallback,
           Replace/ByteFallback/Fuse/Strip decoders, BOS template (Llama 2)
  mistral  Digits + Metaspace(prepend first) pre-tokenizers, ByteFallback +
           Metaspace decoders, byte fallback, BOS template
Added tokens with lstrip / rstrip / single_word / normalized ride along.
"""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors, trainers

CORPUS = Path(__file__).resolve().parent / "data" / "tokenizer_corpus.jsonl"

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                  r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
                 r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

KINDS = ["gpt2", "llama3", "qwen2", "llama2", "mistral"]
BYTE_LEVEL = {"gpt2", "llama3", "qwen2"}

SPECIALS = {
    "gpt2": ["<|endoftext|>"],
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
               "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    "llama2": ["<unk>", "<s>", "</s>"],
    "mistral": ["<unk>", "<s>", "</s>"],
}
BOS = {"llama3": "<|begin_of_text|>", "llama2": "<s>", "mistral": "<s>"}
EOS = {"gpt2": "<|endoftext|>", "llama3": "<|eot_id|>", "qwen2": "<|im_end|>", "llama2": "</s>",
       "mistral": "</s>"}


def corpus_texts() -> list[str]:
    return [json.loads(line)["prompt"] for line in CORPUS.read_text(encoding="utf-8").split("\n")
            if line.strip()]


def _training_texts() -> list[str]:
    # Leave some lines out so encoding meets words, and (with byte fallback)
    # characters, that training never saw.
    texts = corpus_texts()
    return [t for i, t in enumerate(texts) if i % 4 != 3] * 3


def build(kind: str) -> Tokenizer:
    specials = SPECIALS[kind]
    if kind in BYTE_LEVEL:
        tok = Tokenizer(models.BPE(ignore_merges=kind == "llama3"))
        if kind == "gpt2":
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        else:
            pattern = LLAMA3_PATTERN if kind == "llama3" else QWEN2_PATTERN
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ])
        if kind == "qwen2":
            tok.normalizer = normalizers.NFC()
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=900, special_tokens=specials, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tok.train_from_iterator(_training_texts(), trainer)
    else:
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        if kind == "llama2":
            tok.normalizer = normalizers.Sequence(
                [normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
            tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                             decoders.Fuse(), decoders.Strip(" ", 1, 0)])
        else:
            tok.pre_tokenizer = pre_tokenizers.Sequence([
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            ])
            tok.decoder = decoders.Sequence([
                decoders.ByteFallback(),
                decoders.Metaspace(replacement="▁", prepend_scheme="first", split=True),
            ])
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=specials, limit_alphabet=150,
                                      show_progress=False)
        tok.train_from_iterator(_training_texts(), trainer)
        # SentencePiece keeps the 256 <0xXX> byte tokens in the model vocabulary.
        d = json.loads(tok.to_str())
        vocab = d["model"]["vocab"]
        next_id = max(vocab.values()) + 1
        for b in range(256):
            name = f"<0x{b:02X}>"
            if name not in vocab:
                vocab[name] = next_id
                next_id += 1
        tok = Tokenizer.from_str(json.dumps(d))
    if kind in BOS:
        bos = BOS[kind]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))])
    elif kind in BYTE_LEVEL:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    # Added tokens with each flag; the corpus holds them in and out of place.
    tok.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True, normalized=False)])
    tok.add_tokens([AddedToken("[SW]", single_word=True), AddedToken("shardlm", normalized=True)])
    return tok


def save(tok: Tokenizer, kind: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    config = {"eos_token": EOS[kind]}
    if kind in BOS:
        config["bos_token"] = BOS[kind]
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out
