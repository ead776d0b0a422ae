"""The llama.cpp anchor of `marsc bench llm` (SPEC 4.9.1): the same GGUF (SmolLM2-135M-Instruct,
its native Q4_1 weights) and the same first support-chat prompt, run by llama.cpp through the
`llama-cpp-python` package, built from source (`pip install llama-cpp-python`; it is not a
dependency of Mars). Reported as `marsc bench llm` reports Mars: the median time of a batch-1
decode step after the prompt, and one prefill of 512 tokens.

Usage: python llama_cpp_anchor.py MODEL.gguf [--threads 2] [--steps 16] [--rounds 3]
"""
import argparse
import json
import pathlib
import statistics
import time

import numpy as np
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", default=str(pathlib.Path(__file__).parents[2] / "pipelines/data"))
    a = ap.parse_args()
    llm = Llama(model_path=a.model, n_ctx=2048, n_batch=512, n_threads=a.threads,
                n_threads_batch=a.threads, verbose=False)
    prompt = llm.tokenize(first_support_prompt(pathlib.Path(a.data)).encode(), add_bos=False,
                          special=True)
    filler = (prompt * (512 // len(prompt) + 1))[:512]
    steps, prefill = [], []
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
    step_ms = statistics.median(steps)
    out = {"engine": "llama.cpp (llama-cpp-python)", "threads": a.threads,
           "prompt_tokens": len(prompt), "decode_step_ms": step_ms,
           "decode_tokens_per_s": 1e3 / step_ms, "prefill_512_ms": statistics.median(prefill)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
