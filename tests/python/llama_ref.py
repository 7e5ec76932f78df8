"""Independent NumPy reference for Llama-family decoder models.

This module is the correctness oracle for shardlm: it reads a Hugging Face
checkpoint directory (config.json plus single or sharded safetensors) with its
own safetensors reader and runs a plain float64 forward pass with Hugging Face
`LlamaForCausalLM` semantics:

    x = embed_tokens[ids]
    per layer:
        n  = RMSNorm(x) * input_layernorm
        q, k, v = n @ Wq.T, n @ Wk.T, n @ Wv.T          (HF Linear, W is [out, in])
        q, k = rotate-half RoPE at absolute positions
        a  = causal softmax(q k^T / sqrt(head_dim)) v    (query head h -> kv head h // (H/KV))
        x  = x + a @ Wo.T
        m  = RMSNorm(x) * post_attention_layernorm
        x  = x + down(silu(gate(m)) * up(m))
    logits = RMSNorm(x) * norm  @  lm_head.T  (embed_tokens when tied)

With config key "parallel_block": true the layer is PaLM's parallel block,
x = x + Attn(n) + FFN(n) with the single norm n = input_layernorm(x), and the
checkpoint has no post_attention_layernorm tensor.

Families, as Hugging Face defines them (LlamaForCausalLM, MistralForCausalLM,
Qwen2ForCausalLM): projection biases (Llama attention_bias on q/k/v/o and
mlp_bias on gate/up/down; Qwen2 on q/k/v), rope_scaling (linear, dynamic NTK,
llama3, yarn), sliding-window attention (Mistral's sliding_window in every
layer; Qwen2's with use_sliding_window from max_window_layers on), head_dim
and tied embeddings. test_reference_hf.py checks this module against
`transformers` wherever it is installed.

It deliberately shares no code with the C++ engine.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

# ---------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------

# dtype name -> (numpy dtype of the stored elements, bytes per element)
_ST_DTYPES = {
    "F64": (np.dtype("<f8"), 8),
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),  # raw bits; widened by bf16_bits_to_f32
    "I64": (np.dtype("<i8"), 8),
    "I32": (np.dtype("<i4"), 4),
    "I16": (np.dtype("<i2"), 2),
    "I8": (np.dtype("i1"), 1),
    "U8": (np.dtype("u1"), 1),
    "BOOL": (np.dtype("u1"), 1),
}

_NP_TO_ST = {
    np.dtype("float64"): "F64",
    np.dtype("float32"): "F32",
    np.dtype("float16"): "F16",
    np.dtype("int64"): "I64",
    np.dtype("int32"): "I32",
    np.dtype("int16"): "I16",
    np.dtype("int8"): "I8",
    np.dtype("uint8"): "U8",
}


class SafetensorsError(ValueError):
    pass


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32: the bits are the top half."""
    return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)


def f32_to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def read_header(path) -> tuple[dict, int]:
    """Returns (header dict, byte offset where the data buffer starts)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise SafetensorsError(f"{path}: shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            raise SafetensorsError(f"{path}: header length {n} runs past end of file ({size} bytes)")
        header = json.loads(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    return header, 8 + n


def read_safetensors(path, names=None) -> dict[str, np.ndarray]:
    """Reads tensors from one .safetensors file as float32 arrays (floats) or
    their native integer dtype. `names` restricts which tensors are read."""
    path = Path(path)
    header, start = read_header(path)
    size = path.stat().st_size
    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if names is not None and name not in names:
                continue
            dtype = info["dtype"]
            if dtype not in _ST_DTYPES:
                raise SafetensorsError(f"{path}: tensor {name}: unknown dtype {dtype}")
            npdt, width = _ST_DTYPES[dtype]
            shape = [int(s) for s in info["shape"]]
            begin, end = (int(v) for v in info["data_offsets"])
            count = math.prod(shape)
            if end - begin != count * width:
                raise SafetensorsError(f"{path}: tensor {name}: data_offsets span {end - begin} bytes, "
                                       f"shape {shape} x {dtype} needs {count * width}")
            if start + end > size:
                raise SafetensorsError(f"{path}: tensor {name}: data runs past end of file")
            f.seek(start + begin)
            arr = np.frombuffer(f.read(end - begin), dtype=npdt).reshape(shape)
            if dtype == "BF16":
                arr = bf16_bits_to_f32(arr)
            elif dtype in ("F16", "F64"):
                arr = arr.astype(np.float32) if dtype == "F16" else arr.copy()
            else:
                arr = arr.copy()
            out[name] = arr
    return out


def write_safetensors(path, tensors: dict, metadata: dict | None = None, align: bool = True) -> None:
    """Writes a safetensors file. Values are numpy arrays (dtype taken from the
    array) or (dtype_name, array) pairs, where for "BF16" the array holds the
    uint16 bit patterns (or float32 values, which are rounded to bf16).
    With align=False the header is padded so the data buffer starts at an odd
    offset (legal: the format does not require alignment)."""
    entries = []
    for name, value in tensors.items():
        if isinstance(value, tuple):
            dtype, arr = value
            arr = np.asarray(arr)
            if dtype == "BF16" and arr.dtype != np.uint16:
                arr = f32_to_bf16_bits(arr.astype(np.float32))
            else:
                arr = arr.astype(_ST_DTYPES[dtype][0], copy=False)
        else:
            arr = np.asarray(value)
            dtype = _NP_TO_ST[arr.dtype]
        entries.append((name, dtype, arr))
    header: dict = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    blobs = []
    for name, dtype, arr in entries:
        blob = np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)  # align the data buffer to 8 bytes
    if not align:
        hbytes += b" "  # 8 + len(header) is now odd
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for blob in blobs:
            f.write(blob)
    os.replace(tmp, path)


def checkpoint_files(model_dir) -> list[Path]:
    """The safetensors files of a checkpoint directory (single or sharded)."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [model_dir / f for f in sorted(set(weight_map.values()))]
    return [model_dir / "model.safetensors"]


def load_tensors(model_dir) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory, single file or sharded."""
    model_dir = Path(model_dir)
    index = model_dir / "model.safetensors.index.json"
    tensors: dict[str, np.ndarray] = {}
    if index.exists():
        weight_map = json.loads(index.read_text())["weight_map"]
        by_file: dict[str, set] = {}
        for name, fname in weight_map.items():
            by_file.setdefault(fname, set()).add(name)
        for fname, names in sorted(by_file.items()):
            got = read_safetensors(model_dir / fname, names)
            missing = names - got.keys()
            if missing:
                raise SafetensorsError(f"{fname}: missing {sorted(missing)}")
            tensors.update(got)
    else:
        tensors = read_safetensors(model_dir / "model.safetensors")
    return tensors


def tensor_shapes(model_dir) -> dict[str, tuple[str, list[int]]]:
    """name -> (dtype, shape) from the headers only."""
    out = {}
    for f in checkpoint_files(model_dir):
        header, _ = read_header(f)
        for name, info in header.items():
            if name != "__metadata__":
                out[name] = (info["dtype"], list(info["shape"]))
    return out


def load_config(model_dir) -> dict:
    return json.loads((Path(model_dir) / "config.json").read_text())


# ---------------------------------------------------------------------------
# forward pass
# ---------------------------------------------------------------------------

def rms_norm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    """HF LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * w (computed in float64 here)."""
    x = x.astype(np.float64)
    var = np.mean(x * x, axis=-1, keepdims=True)
    return x / np.sqrt(var + eps) * w


def rope_scaling_of(c: dict) -> dict:
    """The rope_scaling dict (or transformers 5's rope_parameters), {} when none."""
    r = c.get("rope_parameters") or c.get("rope_scaling") or {}
    if r.get("rope_type", r.get("type", "default")) == "default":
        return {}
    return r


def rope_inv_freq(c: dict, head_dim: int, seq_len: int | None = None) -> np.ndarray:
    """Inverse frequencies [head_dim/2] after the config's scaling, written from
    the formulas of the YaRN, NTK and Llama 3.1 papers as transformers uses them."""
    r = rope_scaling_of(c)
    base = float((c.get("rope_parameters") or {}).get("rope_theta", c.get("rope_theta", 10000.0)))
    kind = r.get("rope_type", r.get("type", "default")) if r else "default"
    max_pos = int(c.get("max_position_embeddings", 2048))
    d = head_dim
    if kind == "dynamic" and seq_len is not None and seq_len > max_pos:
        f = float(r["factor"])
        base = base * ((f * seq_len / max_pos) - (f - 1)) ** (d / (d - 2))
    inv = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    if kind in ("default", "dynamic"):
        return inv
    factor = float(r["factor"])
    if kind == "linear":
        return inv / factor
    if kind == "llama3":
        old = float(r["original_max_position_embeddings"])
        lo, hi = float(r["low_freq_factor"]), float(r["high_freq_factor"])
        wavelen = 2 * math.pi / inv
        smooth = np.clip((old / wavelen - lo) / (hi - lo), 0.0, 1.0)
        # smooth = 0 (long waves): interpolate by the factor; 1 (short): keep.
        return (1 - smooth) * inv / factor + smooth * inv
    if kind == "yarn":
        orig = float(r.get("original_max_position_embeddings") or max_pos)
        beta_fast, beta_slow = float(r.get("beta_fast") or 32), float(r.get("beta_slow") or 1)

        def dim_for(rotations):  # the dimension that turns `rotations` times over orig
            return d * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low, high = dim_for(beta_fast), dim_for(beta_slow)
        if r.get("truncate", True):
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, d - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(d // 2) - low) / (high - low), 0.0, 1.0)
        return inv / factor * ramp + inv * (1 - ramp)
    raise NotImplementedError(f"rope_type {kind}")


def rope_attention_factor(c: dict) -> float:
    r = rope_scaling_of(c)
    if r.get("rope_type", r.get("type")) != "yarn":
        return 1.0
    if r.get("attention_factor") is not None:
        return float(r["attention_factor"])
    factor = float(r["factor"])

    def mscale(m):
        return 1.0 if factor <= 1 else 0.1 * m * math.log(factor) + 1.0

    if r.get("mscale") and r.get("mscale_all_dim"):
        return mscale(float(r["mscale"])) / mscale(float(r["mscale_all_dim"]))
    return mscale(1.0)


def rope_cos_sin(positions: np.ndarray, head_dim: int, theta: float, config: dict | None = None,
                 seq_lens: np.ndarray | None = None):
    """cos, sin of shape [T, head_dim] (HF: emb = cat(freqs, freqs)). With a
    config, its rope scaling applies; seq_lens[t] is the sequence length whose
    frequencies rotate position t (dynamic NTK only)."""
    c = dict(config or {}, rope_theta=theta)
    positions = np.asarray(positions)
    if seq_lens is None:
        seq_lens = np.full(positions.shape, positions.max() + 1 if positions.size else 0)
    freqs = np.empty((positions.size, head_dim // 2))
    for n in np.unique(seq_lens):
        rows = seq_lens == n
        freqs[rows] = np.outer(positions[rows].astype(np.float64), rope_inv_freq(c, head_dim, int(n)))
    emb = np.concatenate([freqs, freqs], axis=-1)  # [T, d]
    scale = rope_attention_factor(c)
    return np.cos(emb) * scale, np.sin(emb) * scale


def family(c: dict) -> str:
    archs = c.get("architectures") or ["LlamaForCausalLM"]
    return {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral",
            "Qwen2ForCausalLM": "qwen2"}[archs[0]]


def biases(c: dict) -> set[str]:
    """Which projections carry a bias: subsets of q k v o gate up down."""
    fam = family(c)
    if fam == "qwen2":
        return {"q", "k", "v"}
    if fam == "llama":
        out = set()
        if c.get("attention_bias"):
            out |= {"q", "k", "v", "o"}
        if c.get("mlp_bias"):
            out |= {"gate", "up", "down"}
        return out
    return set()


def layer_windows(c: dict) -> list[int | None]:
    """Each layer's sliding window (None: full attention)."""
    L = int(c["num_hidden_layers"])
    fam = family(c)
    if fam == "mistral":
        return [c.get("sliding_window")] * L
    if fam == "qwen2":
        window = c.get("sliding_window") if c.get("use_sliding_window") else None
        types = c.get("layer_types") or [
            "sliding_attention" if window is not None and i >= int(c.get("max_window_layers", L))
            else "full_attention" for i in range(L)]
        return [window if t == "sliding_attention" else None for t in types]
    return [None] * L


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x: [heads, T, d]; cos/sin: [T, d]."""
    return x * cos[None] + rotate_half(x) * sin[None]


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)


def _require(cfg: dict, key: str):
    if key not in cfg:
        raise KeyError(f"config.json: missing {key}")
    return cfg[key]


def expected_shapes(c: dict) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for a Llama-family config (parallel block aware)."""
    E, F, L = int(c["hidden_size"]), int(c["intermediate_size"]), int(c["num_hidden_layers"])
    H = int(c["num_attention_heads"])
    KV = int(c.get("num_key_value_heads") or H)
    D = int(c.get("head_dim") or E // H)
    V = int(c["vocab_size"])
    s = {"model.embed_tokens.weight": (V, E), "model.norm.weight": (E,)}
    if not c.get("tie_word_embeddings", False):
        s["lm_head.weight"] = (V, E)
    out_dims = {"q": H * D, "k": KV * D, "v": KV * D, "o": E, "gate": F, "up": F, "down": E}
    for i in range(L):
        for b in biases(c):
            part = "self_attn" if b in "qkvo" else "mlp"
            s[f"model.layers.{i}.{part}.{b}_proj.bias"] = (out_dims[b],)
        p = f"model.layers.{i}."
        s[p + "input_layernorm.weight"] = (E,)
        if not c.get("parallel_block", False):
            s[p + "post_attention_layernorm.weight"] = (E,)
        s[p + "self_attn.q_proj.weight"] = (H * D, E)
        s[p + "self_attn.k_proj.weight"] = (KV * D, E)
        s[p + "self_attn.v_proj.weight"] = (KV * D, E)
        s[p + "self_attn.o_proj.weight"] = (E, H * D)
        s[p + "mlp.gate_proj.weight"] = (F, E)
        s[p + "mlp.up_proj.weight"] = (F, E)
        s[p + "mlp.down_proj.weight"] = (E, F)
    return s


class LlamaRef:
    """Float64 reference model. `tensors` maps HF names to arrays."""

    def __init__(self, config: dict, tensors: dict[str, np.ndarray]):
        c = config
        self.config = dict(config)
        self.E = int(_require(c, "hidden_size"))
        self.F = int(_require(c, "intermediate_size"))
        self.L = int(_require(c, "num_hidden_layers"))
        self.H = int(_require(c, "num_attention_heads"))
        self.KV = int(c.get("num_key_value_heads") or self.H)
        self.D = int(c.get("head_dim") or self.E // self.H)
        self.V = int(_require(c, "vocab_size"))
        self.eps = float(c.get("rms_norm_eps", 1e-6))
        self.theta = float(c.get("rope_theta", 10000.0))
        self.tied = bool(c.get("tie_word_embeddings", False))
        self.parallel = bool(c.get("parallel_block", False))
        self.windows = layer_windows(c)
        self.biases = biases(c)
        if self.H % self.KV != 0:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        self.t = {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
        self._check_shapes()

    @classmethod
    def from_dir(cls, model_dir) -> "LlamaRef":
        return cls(load_config(model_dir), load_tensors(model_dir))

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return expected_shapes(self.config)

    def _check_shapes(self):
        for name, shape in self.expected_shapes().items():
            if name not in self.t:
                raise KeyError(f"missing tensor {name}")
            if tuple(self.t[name].shape) != shape:
                raise ValueError(f"tensor {name}: shape {self.t[name].shape}, expected {shape}")

    # -- blocks -------------------------------------------------------------

    def linear(self, prefix: str, name: str, x: np.ndarray) -> np.ndarray:
        """HF nn.Linear: x @ W.T (+ b when the family has this bias)."""
        y = x @ self.t[f"{prefix}{name}_proj.weight"].T
        if name in self.biases:
            y = y + self.t[f"{prefix}{name}_proj.bias"]
        return y

    def attention(self, i: int, n: np.ndarray, positions: np.ndarray, return_probs=False,
                  seq_lens=None):
        """n: normed input [T, E]. Causal attention among these T positions
        (within the layer's sliding window, if any)."""
        p = f"model.layers.{i}.self_attn."
        T = n.shape[0]
        H, KV, D = self.H, self.KV, self.D
        q = self.linear(p, "q", n).reshape(T, H, D).transpose(1, 0, 2)
        k = self.linear(p, "k", n).reshape(T, KV, D).transpose(1, 0, 2)
        v = self.linear(p, "v", n).reshape(T, KV, D).transpose(1, 0, 2)
        cos, sin = rope_cos_sin(positions, D, self.theta, self.config, seq_lens)
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        group = H // KV
        kv_of = np.arange(H) // group  # query head h reads kv head h // (H/KV)
        # Contiguous operands keep NumPy's stacked matmul on BLAS.
        q = np.ascontiguousarray(q)
        kt = np.ascontiguousarray(k[kv_of].transpose(0, 2, 1))  # [H, D, T]
        v = np.ascontiguousarray(v[kv_of])  # [H, T, D]
        scale = 1.0 / math.sqrt(D)
        mask = np.triu(np.ones((T, T), dtype=bool), k=1)  # key after query
        if self.windows[i] is not None:  # key at or beyond the window behind the query
            mask |= np.tril(np.ones((T, T), dtype=bool), k=-int(self.windows[i]))
        probs = np.zeros((H, T, T)) if return_probs else None
        a = np.empty((H, T, D))
        for h in range(H):  # 2-D matmuls per head stay on BLAS
            scores = q[h] @ kt[h]  # [T, T]
            scores *= scale
            scores[mask] = -np.inf
            scores -= np.max(scores, axis=-1, keepdims=True)
            ph = np.exp(scores, out=scores)
            ph /= np.sum(ph, axis=-1, keepdims=True)
            a[h] = ph @ v[h]
            if return_probs:
                probs[h] = ph
        a = a.transpose(1, 0, 2).reshape(T, H * D)
        out = self.linear(p, "o", a)
        return (out, probs) if return_probs else out

    def mlp(self, i: int, n: np.ndarray) -> np.ndarray:
        p = f"model.layers.{i}.mlp."
        return self.linear(p, "down", silu(self.linear(p, "gate", n)) * self.linear(p, "up", n))

    def hidden_states(self, ids, seq_lens=None) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError("ids must be a non-empty 1-D list")
        if ids.min() < 0 or ids.max() >= self.V:
            raise ValueError("token id outside the vocabulary")
        positions = np.arange(ids.size)
        x = self.t["model.embed_tokens.weight"][ids]
        for i in range(self.L):
            p = f"model.layers.{i}."
            n = rms_norm(x, self.t[p + "input_layernorm.weight"], self.eps)
            if self.parallel:
                x = x + self.attention(i, n, positions, seq_lens=seq_lens) + self.mlp(i, n)
            else:
                x = x + self.attention(i, n, positions, seq_lens=seq_lens)
                m = rms_norm(x, self.t[p + "post_attention_layernorm.weight"], self.eps)
                x = x + self.mlp(i, m)
        return rms_norm(x, self.t["model.norm.weight"], self.eps)

    def forward(self, ids, seq_lens=None) -> np.ndarray:
        """Logits [T, vocab] (float64) at every position of `ids`. seq_lens
        (dynamic NTK RoPE only): the sequence length whose frequencies rotate
        each position; by default all of them, as one forward pass does."""
        h = self.hidden_states(ids, seq_lens)
        head = self.t["model.embed_tokens.weight"] if self.tied else self.t["lm_head.weight"]
        return h @ head.T

    def greedy(self, ids, n_new: int, stop_ids=()) -> tuple[list[int], np.ndarray]:
        """Greedy decoding by full recomputation. Returns (generated ids,
        step logits [n_steps, vocab]) where row i produced generated[i].
        Under dynamic NTK RoPE, each position is rotated as a KV-cached
        generation does: prompt positions with the prompt's length, position
        p >= len(prompt) with length p + 1."""
        seq = list(ids)
        gen, rows = [], []
        for _ in range(n_new):
            seq_lens = np.array([max(len(ids), p + 1) for p in range(len(seq))])
            logits = self.forward(seq, seq_lens)[-1]
            tok = int(np.argmax(logits))
            rows.append(logits)
            gen.append(tok)
            seq.append(tok)
            if tok in stop_ids:
                break
        return gen, np.stack(rows)

    def n_params(self) -> int:
        return int(sum(v.size for v in self.t.values()))


def max_rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got - ref| / max |ref|: the metric of the 1e-4 logits criterion."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"shape {got.shape} != reference shape {ref.shape}")
    return float(np.max(np.abs(got - ref)) / np.max(np.abs(ref)))
