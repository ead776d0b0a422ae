"""Exec-protocol test program with several outputs: for a text, its length and its words."""

import json
import sys

for line in sys.stdin:
    request = json.loads(line)
    results = []
    for item in request["batch"]:
        text = item["args"][0]
        results.append({"id": item["id"], "ok": [len(text), text.split()]})
    print(json.dumps({"results": results}), flush=True)
