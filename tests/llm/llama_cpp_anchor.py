"""The llama.cpp anchor of `marsc bench llm` (SPEC 4.9.1): the same GGUF (SmolLM2-135M-Instruct,
its native Q4_1 weights) and the same first support-chat prompt, run by llama.cpp through the
`llama-cpp-python` package, built from source (`pip install llama-cpp-python`; it is not a
dependency of Mars). Reported as `marsc bench llm` reports Mars: the median time of a batch-1
decode step after the prompt, one prefill of 512 tokens, and (`--concurrency N`) the median
step of N sequences decoded together in one batch (llama.cpp's batched decoding, the prompt
prefilled once and copied to every sequence), as tokens/s.

Usage: python llama_cpp_anchor.py MODEL.gguf [--threads 2] [--steps 16] [--rounds 3]
       [--concurrency 32]
"""
import argparse
import json
import pathlib
import statistics
import time

import numpy as np
import llama_cpp.llama_cpp as lc
from llama_cpp import Llama

SYSTEM = ("You are the customer support assistant of the Lumo lamp shop. "
          "Answer briefly and only from the facts given.")
INSTRUCTION = "Answer the customer's question in one or two sentences, using only these facts:"


def first_support_prompt(data: pathlib.Path) -> str:
    """`llm_eval::support_prompts`'s first prompt: its expected passage and the two after it."""
    faq = [json.loads(l) for l in (data / "faq.jsonl").read_text().splitlines() if l.strip()]
    q = json.loads((data / "faq_questions.jsonl").read_text().splitlines()[0])
    at = [p["id"] for p in faq].index(q["expect"])
    body = INSTRUCTION + "\n" + "".join(f"- {faq[(at + k) % len(faq)]['text']}\n" for k in range(3))
    body += f"\nQuestion: {q['question']}"
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{body}<|im_end|>\n"
            "<|im_start|>assistant\n")


def batched_steps(llm: Llama, prompt: list, n: int, steps: int, threads: int) -> list:
    """Step times (ms) of `n` sequences decoded together after `prompt`, greedy."""
    p = lc.llama_context_default_params()
    p.n_ctx = n * (len(prompt) + steps) + 512
    p.n_batch = p.n_ubatch = 512
    p.n_seq_max = n
    p.kv_unified = True
    p.n_threads = p.n_threads_batch = threads
    model = llm._model.model
    ctx = lc.llama_init_from_model(model, p)
    vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(model))
    batch = lc.llama_batch_init(512, 0, n)

    def decode(items):
        batch.n_tokens = len(items)
        for i, (tok, pos, seq, out) in enumerate(items):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = tok, pos, 1
            batch.seq_id[i][0], batch.logits[i] = seq, out
        if lc.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    def argmax(i):
        return int(np.argmax(np.ctypeslib.as_array(lc.llama_get_logits_ith(ctx, i), (vocab,))))

    decode([(t, i, 0, i == len(prompt) - 1) for i, t in enumerate(prompt)])
    first = argmax(len(prompt) - 1)
    mem = lc.llama_get_memory(ctx)
    for s in range(1, n):
        lc.llama_memory_seq_cp(mem, 0, s, -1, -1)
    toks, times = [first] * n, []
    for step in range(steps):
        t0 = time.perf_counter()
        decode([(toks[s], len(prompt) + step, s, True) for s in range(n)])
        times.append((time.perf_counter() - t0) * 1e3)
        toks = [argmax(s) for s in range(n)]
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--data", default=str(pathlib.Path(__file__).parents[2] / "pipelines/data"))
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    prompt = llm.tokenize(first_support_prompt(pathlib.Path(a.data)).encode(), add_bos=False,
                          special=True)
    filler = (prompt * (512 // len(prompt) + 1))[:512]
    steps, prefill, batched = [], [], []
    for _ in range(a.rounds):
        llm.reset()
        llm.eval(prompt)
        for _ in range(a.steps):
            t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
            t0 = time.perf_counter()
            llm.eval([t])
            steps.append((time.perf_counter() - t0) * 1e3)
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(filler)
        prefill.append((time.perf_counter() - t0) * 1e3)
        if a.concurrency > 1:
            batched += batched_steps(llm, prompt, a.concurrency, a.steps, a.threads)
    step_ms = statistics.median(steps)
    out = {"engine": "llama.cpp (llama-cpp-python)", "threads": a.threads,
           "prompt_tokens": len(prompt), "decode_step_ms": step_ms,
           "decode_tokens_per_s": 1e3 / step_ms, "prefill_512_ms": statistics.median(prefill)}
    if batched:
        b = statistics.median(batched)
        out.update({"concurrency": a.concurrency, "concurrent_step_ms": b,
                    "concurrent_tok_s": a.concurrency * 1e3 / b})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
