"""Exec-protocol program for tests/hostile_procs.rs: misbehaves as its first argument says.

  blank       answers every request with endless blank lines
  stale       answers every request with endless stale result lines (id 0)
  huge        answers with one line of 65 MiB
  poison      exits (status 9) on a batch with an item containing "crash"; echoes otherwise
  grandchild  starts `sleep 1000` (pid written to the file named by the second argument),
              then echoes
  busy        on a request, writes its pid to the file named by the second argument and
              sleeps for an hour
  closeout    closes its stdout and sleeps for an hour
  banner      prints start-up chatter on stdout, then echoes
"""

import json
import os
import subprocess
import sys
import time

mode = sys.argv[1]
arg = sys.argv[2] if len(sys.argv) > 2 else None


def echo(batch):
    return json.dumps({"results": [{"id": i["id"], "ok": i["args"][0]} for i in batch]})


if mode == "closeout":
    os.close(1)
    time.sleep(3600)
if mode == "grandchild":
    child = subprocess.Popen(["sleep", "1000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(arg + ".tmp", "w") as f:
        f.write(str(child.pid))
    os.rename(arg + ".tmp", arg)
if mode == "banner":
    print("loading model...", flush=True)
    print('{"status": "ready"}', flush=True)

for line in sys.stdin:
    batch = json.loads(line)["batch"]
    if mode == "blank":
        while True:
            sys.stdout.write("\n" * 4096)
            sys.stdout.flush()
    if mode == "stale":
        stale = json.dumps({"results": [{"id": 0, "ok": "old"}]}) + "\n"
        while True:
            sys.stdout.write(stale * 256)
            sys.stdout.flush()
    if mode == "huge":
        chunk = "x" * (1 << 20)
        for _ in range(65):
            sys.stdout.write(chunk)
        sys.stdout.write("\n")
        sys.stdout.flush()
        continue
    if mode == "poison" and any("crash" in i["args"][0] for i in batch):
        sys.stderr.write("poisoned by a request\n")
        sys.stderr.flush()
        sys.exit(9)
    if mode == "busy":
        with open(arg + ".tmp", "w") as f:
            f.write(str(os.getpid()))
        os.rename(arg + ".tmp", arg)
        time.sleep(3600)
    print(echo(batch), flush=True)
