"""Independent reference for Gemma-3-270m greedy decoding (tests/gemma3.rs compares).

Gemma-3-270m is under the Gemma Terms of Use, which are not an open-source license.

A numpy implementation of the Gemma 3 forward pass reading the GGUF with the `gguf` PyPI package
(its own dequantizer), and a SentencePiece-BPE encoder written here after llama.cpp's `spm`
tokenizer: the text's spaces become U+2581, control and user-defined tokens (`\\n`, runs of
spaces, `<start_of_turn>`…) are cut out first (longest first), then characters are merged pair by
pair, always the adjacent pair whose joined piece has the best score (leftmost on ties), and a
character that is no token becomes its UTF-8 bytes `<0xXX>`. Nothing is shared with the Rust code
but the file. Usage:

    pip install numpy gguf
    python3 tests/llm/make_gemma3_reference.py $(marsc models path gemma-3-270m) > tests/llm/gemma3_reference.json
"""
import heapq
import json
import os
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

FEW_SHOT = (
    "Translate Chinese to English.\n"
    "Chinese: 这是我的书。\nEnglish: This is my book.\n"
    "Chinese: 今天天气很好。\nEnglish: The weather is very nice today.\n"
    "Chinese: 这件衣服是红色的。\nEnglish: This piece of clothing is red.\n"
)
TRANSLATE = ["我喜欢喝茶。", "这个苹果很甜。", "请打开窗户。", "他每天早上跑步。", "我们明天去北京。",
             "这本书很有意思。"]
CONTINUE = ["The capital of France is", "Once upon a time, there was a", "def fibonacci(n):",
            "The three primary colors are", "Water boils at"]
MAX_NEW = 16
# Strings whose tokenization alone is compared (Chinese, spaces, digits, newlines, bytes).
TOKENIZE = ["Hello world", "  two  spaces\n\nand lines", "不锈钢保温杯 500ml", "emoji 🙂 ok",
            "2026年12月2日", "<start_of_turn>user\nhi<end_of_turn>", "tab\tend", "naïve café"]
# ... and both sides of the translation test set.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "translate", "zh_en.jsonl"),
          encoding="utf-8") as _f:
    for _line in _f:
        if _line.strip():
            _pair = json.loads(_line)
            TOKENIZE += [_pair["zh"], _pair["en"]]


def field(r, key):
    return r.fields[key].contents()


class Spm:
    def __init__(self, tokens, scores, types):
        self.tokens = tokens
        self.scores = scores
        self.id = {}
        for i, t in enumerate(tokens):
            self.id.setdefault(t, i)
        # control (3) and user-defined (4) tokens are matched whole, longest first
        self.special = sorted((t for t, ty in zip(tokens, types) if ty in (3, 4)), key=len, reverse=True)
        self.normal = {t for t, ty in zip(tokens, types) if ty == 1}

    def encode(self, text):
        frags = [(text, False)]
        for sp in self.special:
            out = []
            for f, done in frags:
                if done or sp not in f:
                    out.append((f, done))
                    continue
                parts = f.split(sp)
                for j, p in enumerate(parts):
                    if p:
                        out.append((p, False))
                    if j < len(parts) - 1:
                        out.append((sp, True))
            frags = out
        ids = []
        for f, done in frags:
            ids += [self.id[f]] if done else self.pieces(f.replace(" ", "\u2581"))
        return ids

    def pieces(self, text):
        sym = list(text)
        alive = [True] * len(sym)
        nxt = list(range(1, len(sym) + 1))
        prv = list(range(-1, len(sym) - 1))
        heap = []

        def push(a, b):
            if a < 0 or b >= len(sym):
                return
            t = sym[a] + sym[b]
            if t in self.normal:
                heapq.heappush(heap, (-self.scores[self.id[t]], a, t))

        for i in range(len(sym) - 1):
            push(i, i + 1)
        while heap:
            _, a, t = heapq.heappop(heap)
            if not alive[a] or nxt[a] >= len(sym) or sym[a] + sym[nxt[a]] != t:
                continue
            b = nxt[a]
            sym[a] = t
            alive[b] = False
            nxt[a] = nxt[b]
            if nxt[b] < len(sym):
                prv[nxt[b]] = a
            push(prv[a], a)
            push(a, nxt[a])
        ids = []
        for i, s in enumerate(sym):
            if not alive[i]:
                continue
            if s in self.id:
                ids.append(self.id[s])
            else:
                ids += [self.id["<0x%02X>" % b] for b in s.encode("utf-8")]
        return ids

    def decode(self, ids):
        out = b""
        for i in ids:
            t = self.tokens[i]
            if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
                out += bytes([int(t[3:5], 16)])
            else:
                out += t.replace("\u2581", " ").encode("utf-8")
        return out.decode("utf-8", errors="replace")


def main(path):
    r = GGUFReader(path)
    tokens = [str(t) for t in field(r, "tokenizer.ggml.tokens")]
    scores = [float(s) for s in field(r, "tokenizer.ggml.scores")]
    types = [int(t) for t in field(r, "tokenizer.ggml.token_type")]
    spm = Spm(tokens, scores, types)
    control = {i for i, ty in enumerate(types) if ty == 3}
    bos = int(field(r, "tokenizer.ggml.bos_token_id"))
    eos = {int(field(r, "tokenizer.ggml.eos_token_id")), spm.id["<end_of_turn>"]}

    W = {}
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]
        W[t.name] = dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)
    a = "gemma3."
    d = int(field(r, a + "embedding_length"))
    L = int(field(r, a + "block_count"))
    H = int(field(r, a + "attention.head_count"))
    KV = int(field(r, a + "attention.head_count_kv"))
    hd = int(field(r, a + "attention.key_length"))
    eps = float(field(r, a + "attention.layer_norm_rms_epsilon"))
    base_global = float(field(r, a + "rope.freq_base"))
    window = int(field(r, a + "attention.sliding_window"))
    base_local = 10000.0
    emb = W["token_embd.weight"]

    def norm(x, w):  # the GGUF's norm weights already hold Gemma's 1 + w
        x64 = x.astype(np.float64)
        return (x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + eps)).astype(np.float32) * w

    def rope(x, pos, base):  # x [n, heads, hd]; NeoX: the two halves rotate
        inv = 1.0 / (base ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang).astype(np.float32)[:, None, :], np.sin(ang).astype(np.float32)[:, None, :]
        x0, x1 = x[..., : hd // 2], x[..., hd // 2:]
        return np.concatenate([x0 * c - x1 * s, x1 * c + x0 * s], axis=-1)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

    def generate(ids):
        cache = [([], []) for _ in range(L)]
        gen, chunk, start = [], list(ids), 0
        while True:
            n_new = len(chunk)
            pos = np.arange(start, start + n_new, dtype=np.float64)
            x = emb[chunk] * np.float32(np.sqrt(d))
            for l in range(L):
                b = f"blk.{l}."
                is_global = (l + 1) % 6 == 0
                h_ = norm(x, W[b + "attn_norm.weight"])
                q = (h_ @ W[b + "attn_q.weight"].T).reshape(n_new, H, hd)
                k = (h_ @ W[b + "attn_k.weight"].T).reshape(n_new, KV, hd)
                v = (h_ @ W[b + "attn_v.weight"].T).reshape(n_new, KV, hd)
                q = norm(q, W[b + "attn_q_norm.weight"])
                k = norm(k, W[b + "attn_k_norm.weight"])
                base = base_global if is_global else base_local
                q, k = rope(q, pos, base), rope(k, pos, base)
                cache[l][0].append(k)
                cache[l][1].append(v)
                K = np.concatenate(cache[l][0])
                V = np.concatenate(cache[l][1])
                n = K.shape[0]
                qpos = (start + np.arange(n_new))[:, None]
                kpos = np.arange(n)[None, :]
                mask = kpos > qpos
                if not is_global:
                    mask = mask | (qpos - kpos >= window)
                y = np.empty((n_new, H, hd), dtype=np.float32)
                for hh in range(H):
                    g = hh // (H // KV)
                    s = q[:, hh, :] @ K[:, g, :].T / np.sqrt(hd)
                    s = np.where(mask, -np.inf, s)
                    s = np.exp(s - s.max(-1, keepdims=True))
                    s /= s.sum(-1, keepdims=True)
                    y[:, hh, :] = s @ V[:, g, :]
                o = y.reshape(n_new, H * hd) @ W[b + "attn_output.weight"].T
                x = x + norm(o, W[b + "post_attention_norm.weight"])
                f = norm(x, W[b + "ffn_norm.weight"])
                m = (gelu(f @ W[b + "ffn_gate.weight"].T) * (f @ W[b + "ffn_up.weight"].T)) @ W[b + "ffn_down.weight"].T
                x = x + norm(m, W[b + "post_ffw_norm.weight"])
            logits = norm(x[-1:], W["output_norm.weight"]) @ emb.T
            nxt = int(np.argmax(logits[0]))
            start += n_new
            if nxt in eos:
                break
            gen.append(nxt)
            if len(gen) >= MAX_NEW:
                break
            chunk = [nxt]
        return gen

    prompts = [FEW_SHOT + f"Chinese: {s}\nEnglish:" for s in TRANSLATE] + CONTINUE
    cases = []
    for p in prompts:
        ids = [bos] + spm.encode(p)
        gen = generate(ids)
        text = spm.decode([t for t in gen if t not in control])
        cases.append({"prompt": p, "prompt_ids": ids, "generated": gen, "text": text})
        print(repr(p[-40:]), "->", repr(text), file=sys.stderr)
    tok = [{"text": s, "ids": spm.encode(s)} for s in TOKENIZE]
    json.dump({"model": "gemma-3-270m", "license": "Gemma Terms of Use (not open source)",
               "max_new_tokens": MAX_NEW, "bos": True,
               "made_by": "tests/llm/make_gemma3_reference.py (numpy + gguf, SentencePiece-BPE encoder written there)",
               "tokenize": tok, "cases": cases}, sys.stdout, indent=1, ensure_ascii=False)
    print()


if __name__ == "__main__":
    main(sys.argv[1])
