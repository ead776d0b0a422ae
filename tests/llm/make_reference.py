"""Independent reference for SmolLM2-135M-Instruct greedy decoding (tests/llm.rs compares).

A numpy implementation of the Llama forward pass reading the GGUF with the `gguf` PyPI package
(its own dequantizer), and the prompts tokenized by the `tokenizers` PyPI package from the
GGUF's vocabulary and merges (digits split, byte-level; `<|im_start|>`/`<|im_end|>` special).
Nothing is shared with the Rust code but the file. Usage:

    pip install numpy gguf tokenizers
    python3 tests/llm/make_reference.py $(marsc models path smollm2-135m-instruct) > tests/llm/smollm2_reference.json
"""
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "How many days are in a week?",
    "Write one sentence about the sea.",
    "What is 12 plus 7?",
    "Translate 'thank you' into Spanish.",
    "Give me a synonym for happy.",
    "What do bees make?",
    "Which planet is known as the red planet?",
    "Say hello in a friendly way.",
    "What is the boiling point of water in Celsius?",
    "List two fruits that are yellow.",
]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
MAX_NEW = 24


def field(r, key):
    f = r.fields[key]
    return f.contents()


def main(path):
    r = GGUFReader(path)
    tokens = field(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in field(r, "tokenizer.ggml.merges")]
    types = field(r, "tokenizer.ggml.token_type")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True) for t, ty in zip(tokens, types) if ty in (3, 4)])

    W = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        W[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    d = field(r, "llama.embedding_length")
    L = field(r, "llama.block_count")
    H = field(r, "llama.attention.head_count")
    KV = field(r, "llama.attention.head_count_kv")
    eps = field(r, "llama.attention.layer_norm_rms_epsilon")
    base = field(r, "llama.rope.freq_base")
    hd = d // H
    emb = W["token_embd.weight"]
    head = W.get("output.weight", emb)
    inv = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))

    def norm(x, w):
        return x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + eps).astype(np.float32) * w

    def rope(x, pos):  # x [n, heads, hd], adjacent pairs rotate
        a = pos[:, None] * inv[None, :]
        c, s = np.cos(a).astype(np.float32)[:, None, :], np.sin(a).astype(np.float32)[:, None, :]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * c - x1 * s
        out[..., 1::2] = x0 * s + x1 * c
        return out

    eos = {field(r, "tokenizer.ggml.eos_token_id")}
    for t in ("<|im_end|>", "<|endoftext|>"):
        if tok.token_to_id(t) is not None:
            eos.add(tok.token_to_id(t))
    out = []
    for p in PROMPTS:
        text = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{p}<|im_end|>\n<|im_start|>assistant\n"
        ids = tok.encode(text, add_special_tokens=False).ids
        cache = [([], []) for _ in range(L)]
        gen = []
        chunk, start = list(ids), 0
        while True:
            pos = np.arange(start, start + len(chunk), dtype=np.float64)
            x = emb[chunk]
            for l in range(L):
                b = f"blk.{l}."
                a = norm(x, W[b + "attn_norm.weight"])
                q = (a @ W[b + "attn_q.weight"].T).reshape(len(chunk), H, hd)
                k = (a @ W[b + "attn_k.weight"].T).reshape(len(chunk), KV, hd)
                v = (a @ W[b + "attn_v.weight"].T).reshape(len(chunk), KV, hd)
                q, k = rope(q, pos), rope(k, pos)
                cache[l][0].append(k)
                cache[l][1].append(v)
                K = np.concatenate(cache[l][0])
                V = np.concatenate(cache[l][1])
                n = K.shape[0]
                y = np.empty((len(chunk), H, hd), dtype=np.float32)
                for h in range(H):
                    g = h // (H // KV)
                    s = q[:, h, :] @ K[:, g, :].T / np.sqrt(hd)
                    mask = np.arange(n)[None, :] > (start + np.arange(len(chunk)))[:, None]
                    s = np.where(mask, -np.inf, s)
                    s = np.exp(s - s.max(-1, keepdims=True))
                    s /= s.sum(-1, keepdims=True)
                    y[:, h, :] = s @ V[:, g, :]
                x = x + y.reshape(len(chunk), d) @ W[b + "attn_output.weight"].T
                f = norm(x, W[b + "ffn_norm.weight"])
                gt = f @ W[b + "ffn_gate.weight"].T
                up = f @ W[b + "ffn_up.weight"].T
                x = x + ((gt / (1 + np.exp(-gt))) * up) @ W[b + "ffn_down.weight"].T
            logits = norm(x[-1:], W["output_norm.weight"]) @ head.T
            nxt = int(np.argmax(logits[0]))
            start += len(chunk)
            if nxt in eos:
                break
            gen.append(nxt)
            if len(gen) >= MAX_NEW:
                break
            chunk = [nxt]
        out.append({"prompt": p, "prompt_ids": ids, "generated": gen, "text": tok.decode(gen)})
        print(p, "->", tok.decode(gen), file=sys.stderr)
    json.dump({"model": "smollm2-135m-instruct", "system": SYSTEM, "max_new_tokens": MAX_NEW,
               "made_by": "tests/llm/make_reference.py (numpy + gguf + tokenizers)", "cases": out},
              sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
