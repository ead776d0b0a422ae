# An exec node that dies when it sees 13 and answers everything else with x + 1.
import json, sys
for line in sys.stdin:
    batch = json.loads(line)["batch"]
    if any(item["args"][0] == 13 for item in batch):
        sys.exit(3)
    out = [{"id": item["id"], "ok": item["args"][0] + 1} for item in batch]
    print(json.dumps({"results": out}), flush=True)
