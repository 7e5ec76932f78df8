"""The tokenizer against Hugging Face's `tokenizers` library: ids from
encoding and text from decoding must be equal, exactly, on the committed
mixed corpus (tests/python/data/tokenizer_corpus.jsonl), for a tokenizer of
each family trained here with `tokenizers` itself (tokenizer_kinds.py).
Also: round trips, streaming decode, text prompts through `generate`, and
bad input."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from tokenizers import Tokenizer

import tokenizer_kinds
from conftest import SUBPROCESS_ENV, parse_single_json
from tokenizer_kinds import BYTE_LEVEL, KINDS, corpus_texts

TEXTS = corpus_texts()


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    """kind -> (model directory holding tokenizer.json, HF Tokenizer loaded from it)."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind in KINDS:
        directory = tokenizer_kinds.save(tokenizer_kinds.build(kind), kind, root / kind)
        # Compare with what the saved file says, as shardlm reads it.
        out[kind] = (directory, Tokenizer.from_file(str(directory / "tokenizer.json")))
    return out


def write_jsonl(path, key, items):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for item in items:
            f.write(json.dumps({key: item}, ensure_ascii=False) + "\n")
    return path


def jsonl(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.split("\n") if line]


def shardlm_encode(shardlm, directory, texts, tmp_path, special=True):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", "prompt", texts)
    extra = [] if special else ["--no-special-tokens"]
    p = shardlm.run("tokenize", "--model", directory, "--prompt-file", prompts, *extra)
    return [o["ids"] for o in jsonl(p.stdout)]


def shardlm_decode(shardlm, directory, id_lists, tmp_path, skip_special=False):
    ids_file = write_jsonl(tmp_path / "ids.jsonl", "ids", id_lists)
    extra = ["--skip-special-tokens"] if skip_special else []
    p = shardlm.run("detokenize", "--model", directory, "--ids-file", ids_file, "--stream", *extra)
    return jsonl(p.stdout)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("special", [True, False])
def test_encode_equals_hf(shardlm, kinds, kind, special, tmp_path):
    directory, hf = kinds[kind]
    # Each corpus line, the whole corpus as one text, and line pairs joined
    # by each separator the pre-tokenizers treat specially.
    texts = TEXTS + ["\n".join(TEXTS)] + [a + sep + b for a, b, sep in
                                          zip(TEXTS, TEXTS[1:], [" ", "\n", "\t", "  ", ""] * 20)]
    got = shardlm_encode(shardlm, directory, texts, tmp_path, special)
    want = [hf.encode(t, add_special_tokens=special).ids for t in texts]
    assert len(got) == len(want)
    wrong = [i for i in range(len(texts)) if got[i] != want[i]]
    print(f"{kind}: {len(texts) - len(wrong)}/{len(texts)} texts encode equal")
    for i in wrong[:3]:
        print(f"text {texts[i]!r}\n  shardlm {got[i]}\n  hf      {want[i]}")
    assert not wrong, f"{len(wrong)} of {len(texts)} texts encode differently (first: {texts[wrong[0]]!r})"
    # Special tokens written in the text are the special tokens, not their letters.
    for name in tokenizer_kinds.SPECIALS[kind]:
        if any(name in t for t in TEXTS):
            assert hf.token_to_id(name) in sum(got, [])


def test_byte_level_prefix_space_equals_hf(shardlm, kinds, tmp_path):
    """ByteLevel with add_prefix_space (RoBERTa's layout): a space before every piece."""
    directory, _ = kinds["gpt2"]
    d = json.loads((directory / "tokenizer.json").read_text())
    d["pre_tokenizer"]["add_prefix_space"] = True
    out = tmp_path / "prefix"
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(d))
    hf = Tokenizer.from_file(str(out / "tokenizer.json"))
    assert shardlm_encode(shardlm, out, TEXTS, tmp_path) == [hf.encode(t).ids for t in TEXTS]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("skip_special", [False, True])
def test_decode_and_stream_equal_hf(shardlm, kinds, kind, skip_special, tmp_path):
    directory, hf = kinds[kind]
    rng = random.Random(7)
    vocab = hf.get_vocab_size(with_added_tokens=True)
    id_lists = [hf.encode(t).ids for t in TEXTS]
    # Arbitrary id sequences: byte tokens out of order, partial characters,
    # special tokens anywhere; what a model may sample.
    id_lists += [[rng.randrange(vocab) for _ in range(rng.randrange(1, 40))] for _ in range(200)]
    # Each multi-byte character of the corpus split over its byte tokens.
    id_lists += [hf.encode(t, add_special_tokens=False).ids[:k]
                 for t in TEXTS[7:16] for k in range(1, 12)]
    got = shardlm_decode(shardlm, directory, id_lists, tmp_path, skip_special)
    want = [hf.decode(ids, skip_special_tokens=skip_special) for ids in id_lists]
    wrong = [i for i in range(len(id_lists)) if got[i]["text"] != want[i]]
    print(f"{kind}: {len(id_lists) - len(wrong)}/{len(id_lists)} id lists decode equal")
    for i in wrong[:3]:
        print(f"ids {id_lists[i]}\n  shardlm {got[i]['text']!r}\n  hf      {want[i]!r}")
    assert not wrong, f"{len(wrong)} of {len(id_lists)} id lists decode differently"
    # Streaming: the pieces, one per id plus the final flush, make the text.
    for ids, g in zip(id_lists, got):
        assert "".join(g["chunks"]) == g["text"], ids


@pytest.mark.parametrize("kind", KINDS)
def test_stream_holds_back_split_characters(shardlm, kinds, kind, tmp_path):
    """A character spread over several tokens appears whole, never as U+FFFD."""
    directory, hf = kinds[kind]
    ids = hf.encode("a 😀👨‍👩‍👧 日本 b", add_special_tokens=False).ids
    [g] = shardlm_decode(shardlm, directory, [ids], tmp_path)
    assert "".join(g["chunks"]) == g["text"] == hf.decode(ids, skip_special_tokens=False)
    assert all("\ufffd" not in c for c in g["chunks"]), g["chunks"]
    # At least one character took more than one token, and its first
    # token printed nothing.
    assert "" in g["chunks"][:-1], g["chunks"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip(shardlm, kinds, kind, tmp_path):
    directory, hf = kinds[kind]
    ids = shardlm_encode(shardlm, directory, TEXTS, tmp_path, special=False)
    got = [g["text"] for g in shardlm_decode(shardlm, directory, ids, tmp_path)]
    assert got == [hf.decode(hf.encode(t, add_special_tokens=False).ids, skip_special_tokens=False)
                   for t in TEXTS]
    # Added tokens break the text into pieces: <mask> strips the spaces
    # around it (lstrip, rstrip), and SentencePiece-style normalisers prepend
    # ▁ to every piece. Lossy by design; the rest must come back.
    added = tokenizer_kinds.SPECIALS[kind] + ["<mask>", "[SW]", "shardlm"]
    lossless = [i for i, t in enumerate(TEXTS) if not any(a in t for a in added)]
    want = [TEXTS[i] for i in lossless]
    if kind == "qwen2":
        import unicodedata
        want = [unicodedata.normalize("NFC", t) for t in want]
    if kind == "mistral":
        # Metaspace's decoder drops every ▁ of the first token: leading
        # spaces are lost.
        keep = [k for k, i in enumerate(lossless) if not TEXTS[i][:1].isspace()]
        lossless, want = [lossless[k] for k in keep], [want[k] for k in keep]
    assert len(lossless) > len(TEXTS) * 2 // 3
    assert [got[i] for i in lossless] == want


# ---------------------------------------------------------------------------
# Text through `generate`
# ---------------------------------------------------------------------------

def test_make_model_tokenizer_loads_in_hf(shardlm, models):
    model = models.get("tiny")
    hf = Tokenizer.from_file(str(model / "tokenizer.json"))
    config = json.loads((model / "config.json").read_text())
    # Every id the model can sample is a token, and no token is beyond it.
    assert hf.get_vocab_size(with_added_tokens=True) == config["vocab_size"]
    text = "Hello, my name is shardlm and I write text."
    p = shardlm.run("tokenize", "--model", model, text)
    assert [int(x) for x in p.stdout.strip().split(",")] == hf.encode(text).ids
    assert hf.encode(text).ids[0] == 1  # BOS <s>
    assert len(hf.encode(text).ids) < 0.6 * len(text.encode()), "merges were learnt"


def test_generate_prompt_text(shardlm, models):
    model = models.get("tiny")
    hf = Tokenizer.from_file(str(model / "tokenizer.json"))
    prompt = "The model reads a prompt"
    out = shardlm.generate_json(model, None, "--prompt", prompt, "--max-new-tokens", "12")
    assert out["prompt_ids"] == [hf.encode(prompt).ids]
    [generated] = out["generated_ids"]
    assert out["text"] == [hf.decode(generated, skip_special_tokens=True)]
    # The same prompt as ids gives the same tokens.
    same = shardlm.generate_json(model, hf.encode(prompt).ids, "--max-new-tokens", "12")
    assert same["generated_ids"] == [generated]
    assert "text" not in same


def test_generate_streams_the_final_text(shardlm, models):
    model = models.get("tiny")
    prompt = "Once upon a time"
    out = shardlm.generate_json(model, None, "--prompt", prompt, "--max-new-tokens", "24")
    p = shardlm.run("generate", "--model", model, "--prompt", prompt, "--max-new-tokens", "24",
                    "--stream")
    assert (prompt + out["text"][0] + "\n") in p.stdout, p.stdout
    assert "sequence 0:" not in p.stdout


def test_generate_streams_on_a_terminal(shardlm, models):
    """Without --stream, a terminal on stdout turns streaming on."""
    import pty
    model = models.get("tiny")
    primary, secondary = pty.openpty()
    try:
        p = subprocess.run([str(shardlm.path), "generate", "--model", str(model), "--prompt", "Hi",
                            "--max-new-tokens", "4"], stdout=secondary, stderr=subprocess.PIPE,
                           timeout=60, env=SUBPROCESS_ENV)
        os.close(secondary)
        secondary = -1
        chunks = []
        while True:
            try:
                data = os.read(primary, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        if secondary >= 0:
            os.close(secondary)
        os.close(primary)
    assert p.returncode == 0, p.stderr
    shown = b"".join(chunks).decode().replace("\r\n", "\n")
    assert "\nHi" in shown and "sequence 0:" not in shown, shown


def test_generate_batch_of_prompts(shardlm, models, tmp_path):
    model = models.get("tiny")
    hf = Tokenizer.from_file(str(model / "tokenizer.json"))
    prompts = ["Hello there", "A longer prompt about the river and the village"]
    out = shardlm.generate_json(model, None, "--prompt", prompts[0], "--prompt", prompts[1],
                                "--max-new-tokens", "6")
    assert out["prompt_ids"] == [hf.encode(p).ids for p in prompts]
    assert len(out["text"]) == 2
    # The same prompts from a file, as lines and as JSON Lines.
    lines = tmp_path / "prompts.txt"
    lines.write_text("\n".join(prompts) + "\n\n")
    from_lines = shardlm.generate_json(model, None, "--prompt-file", lines, "--max-new-tokens", "6")
    records = write_jsonl(tmp_path / "prompts.jsonl", "prompt", prompts)
    from_jsonl = shardlm.generate_json(model, None, "--prompt-file", records, "--max-new-tokens", "6")
    for other in (from_lines, from_jsonl):
        assert other["prompt_ids"] == out["prompt_ids"]
        assert other["generated_ids"] == out["generated_ids"]
    # The plain-text report shows each sequence's text.
    p = shardlm.run("generate", "--model", model, "--prompt-file", lines, "--max-new-tokens", "6",
                    "--no-stream")
    for s, prompt in enumerate(prompts):
        assert f"sequence {s}: {prompt}{out['text'][s]}\n" in p.stdout


def test_generate_stops_at_eos(shardlm, models):
    """Text generation ends at the tokenizer's EOS; --ignore-eos goes on."""
    model = models.get("tiny")
    base = shardlm.generate_json(model, None, "--prompt", "Hello", "--max-new-tokens", "8",
                                 "--ignore-eos")
    first = base["generated_ids"][0][0]
    # Make the first sampled token an EOS by naming it one through config.json.
    import shutil
    copy = model.parent / "tiny-eos"
    if not copy.exists():
        shutil.copytree(model, copy)
    config = json.loads((copy / "config.json").read_text())
    config["eos_token_id"] = first
    (copy / "config.json").write_text(json.dumps(config))
    stopped = shardlm.generate_json(copy, None, "--prompt", "Hello", "--max-new-tokens", "8")
    assert stopped["generated_ids"] == [[first]]
    going = shardlm.generate_json(copy, None, "--prompt", "Hello", "--max-new-tokens", "8",
                                  "--ignore-eos")
    assert going["generated_ids"] == base["generated_ids"]


# ---------------------------------------------------------------------------
# Bad input: one line on stderr naming the file, field or flag; exit 1 for
# data, 2 for usage; nothing on stdout, no file half-written.
# ---------------------------------------------------------------------------

def fails(p, code, *words):
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\nstderr: {p.stderr}"
    lines = p.stderr.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("shardlm: error: "), p.stderr
    for w in words:
        assert w in lines[0], f"{w!r} not in: {lines[0]}"
    assert p.stdout == "", p.stdout


def corrupted(kinds, tmp_path, name, edit):
    directory, _ = kinds["gpt2"]
    d = json.loads((directory / "tokenizer.json").read_text())
    edit(d)
    out = tmp_path / name
    out.mkdir()
    (out / "tokenizer.json").write_text(json.dumps(d))
    return out


def test_missing_tokenizer(shardlm, tmp_path, models):
    p = shardlm.run("tokenize", "--model", tmp_path, "hello", check=False)
    fails(p, 1, str(tmp_path / "tokenizer.json"))
    # generate with text needs one too; it fails before loading weights.
    model = models.get("tiny")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        os.symlink(model / f, bare / f)
    dump = tmp_path / "logits.npy"
    p = shardlm.run("generate", "--model", bare, "--prompt", "hello", "--dump-logits", dump,
                    check=False)
    fails(p, 1, "tokenizer.json", "--prompt-ids")
    assert not dump.exists()


def test_corrupt_tokenizer(shardlm, kinds, tmp_path):
    directory, _ = kinds["gpt2"]
    text = (directory / "tokenizer.json").read_text()
    bad = tmp_path / "truncated"
    bad.mkdir()
    (bad / "tokenizer.json").write_text(text[: len(text) // 2])
    fails(shardlm.run("tokenize", "--model", bad, "hi", check=False), 1, "tokenizer.json", "JSON")
    unreadable = tmp_path / "dir"
    (unreadable / "tokenizer.json").mkdir(parents=True)
    fails(shardlm.run("tokenize", "--model", unreadable, "hi", check=False), 1, "tokenizer.json")


@pytest.mark.parametrize("field, edit, words", [
    ("model-type", lambda d: d["model"].update(type="Unigram"), ["model.type", "Unigram", "BPE"]),
    ("normalizer", lambda d: d.update(normalizer={"type": "Lowercase"}),
     ["normalizer.type", "Lowercase"]),
    ("pre-tokenizer", lambda d: d.update(pre_tokenizer={"type": "Whitespace"}),
     ["pre_tokenizer.type", "Whitespace"]),
    ("decoder", lambda d: d.update(decoder={"type": "WordPiece"}), ["decoder.type", "WordPiece"]),
    ("post-processor", lambda d: d.update(post_processor={"type": "Mystery"}),
     ["post_processor.type", "Mystery"]),
    ("merge", lambda d: d["model"]["merges"].append(["no-such", "token"]),
     ["model.merges[", "no-such"]),
    ("vocab", lambda d: d["model"].update(vocab=[1, 2]), ["model.vocab"]),
    ("regex", lambda d: d.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": "(unclosed"},
                                                "behavior": "Isolated", "invert": False}),
     ["pre_tokenizer.pattern.Regex", "(unclosed"]),
    ("padding", lambda d: d.update(padding={"strategy": "BatchLongest"}), ["padding"]),
])
def test_unsupported_or_broken_fields(shardlm, kinds, tmp_path, field, edit, words):
    bad = corrupted(kinds, tmp_path, field, edit)
    p = shardlm.run("tokenize", "--model", bad, "hi", check=False)
    fails(p, 1, str(bad / "tokenizer.json"), *words)


def test_invalid_utf8(shardlm, kinds, models, tmp_path):
    directory, _ = kinds["gpt2"]
    bad = b"caf\xc3 ok"
    p = subprocess.run([str(shardlm.path), "tokenize", "--model", str(directory), bad],
                       capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=60)
    fails(p, 2, "TEXT", "UTF-8", "byte 3")
    model = models.get("tiny")
    p = subprocess.run([str(shardlm.path), "generate", "--model", str(model), "--prompt", b"ok",
                        "--prompt", bad], capture_output=True, text=True, env=SUBPROCESS_ENV,
                       timeout=60)
    fails(p, 2, "--prompt 2", "UTF-8")
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"fine\n" + bad + b"\n")
    p = shardlm.run("generate", "--model", model, "--prompt-file", prompts, check=False)
    fails(p, 1, f"{prompts} line 2", "UTF-8")


def test_bad_prompt_files(shardlm, models, tmp_path):
    model = models.get("tiny")
    p = shardlm.run("generate", "--model", model, "--prompt-file", tmp_path / "none", check=False)
    fails(p, 1, str(tmp_path / "none"), "--prompt-file")
    jl = tmp_path / "bad.jsonl"
    jl.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    fails(shardlm.run("generate", "--model", model, "--prompt-file", jl, check=False), 1,
          f"{jl} line 2", '"prompt"')
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    fails(shardlm.run("generate", "--model", model, "--prompt-file", empty, check=False), 1,
          str(empty), "no prompt")
    p = shardlm.run("generate", "--model", model, "--prompt", "a", "--prompt-ids", "1,2",
                    check=False)
    assert p.returncode == 2 and "--prompt" in p.stderr
    p = shardlm.run("generate", "--model", model, "--prompt", "a", "--prompt", "b", "--stream",
                    check=False)
    fails(p, 2, "--stream")


def test_decode_out_of_vocabulary(shardlm, kinds, tmp_path):
    directory, hf = kinds["llama2"]
    n = hf.get_vocab_size(with_added_tokens=True)
    p = shardlm.run("detokenize", "--model", directory, f"5,{n}", check=False)
    fails(p, 1, f"token id {n}", "tokenizer.json")
    p = shardlm.run("detokenize", "--model", directory, "5,-1", check=False)
    fails(p, 1, "token id -1")
    p = shardlm.run("detokenize", "--model", directory, "5,x", check=False)
    fails(p, 2, "IDS", '"x"')
    ids = tmp_path / "ids.txt"
    ids.write_text("1,2\n3,zz\n")
    fails(shardlm.run("detokenize", "--model", directory, "--ids-file", ids, check=False), 1,
          f"{ids} line 2")
