"""Exec-protocol test program: answers every item with its first argument, unchanged.

Special first arguments change its behaviour, so one program covers the failure cases:
  "crash"   write a message to stderr and exit with status 7 (the whole batch is lost)
  "hang"    stop answering (sleep for an hour)
  "error"   answer this item with an error
  "skip"    leave this item out of the response
  "garbage" answer the batch with a line that is not JSON
  "noise"   write 256 KiB to stderr before answering (more than a pipe holds)
With a file name as its first command-line argument, it writes its pid there at start.
"""

import json
import os
import sys
import time

if len(sys.argv) > 1:
    with open(sys.argv[1], "w") as f:
        f.write(str(os.getpid()))

for line in sys.stdin:
    request = json.loads(line)
    results = []
    garbage = False
    for item in request["batch"]:
        arg = item["args"][0] if item["args"] else None
        if arg == "crash":
            sys.stderr.write("crashing on purpose\n")
            sys.stderr.flush()
            sys.exit(7)
        if arg == "hang":
            time.sleep(3600)
        if arg == "noise":
            sys.stderr.write(("x" * 1023 + "\n") * 256)
            sys.stderr.flush()
        if arg == "garbage":
            garbage = True
        if arg == "skip":
            continue
        if arg == "error":
            results.append({"id": item["id"], "error": "asked to fail"})
        else:
            results.append({"id": item["id"], "ok": arg})
    if garbage:
        print("this is not a response", flush=True)
    else:
        print(json.dumps({"results": results}), flush=True)
