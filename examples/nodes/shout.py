"""An exec node for examples/word_stats.mars: upper-cases each word and adds "!".

One JSON line in per batch, one JSON line out (SPEC.md chapter 5):
  -> {"batch": [{"id": 1, "args": ["hello"]}]}
  <- {"results": [{"id": 1, "ok": "HELLO!"}]}
"""

import json
import sys

for line in sys.stdin:
    batch = json.loads(line)["batch"]
    results = []
    for item in batch:
        word = item["args"][0]
        if not isinstance(word, str):
            results.append({"id": item["id"], "error": "expected text"})
        else:
            results.append({"id": item["id"], "ok": word.upper() + "!"})
    print(json.dumps({"results": results}), flush=True)
