"""Drive `marsc serve` with the real Python clients: tritonclient (HTTP and gRPC) and openai.

Usage: python tests/serve/clients.py [path/to/marsc]   (default: target/debug/marsc)

Starts `marsc serve` on the test plans in this folder (loopback, ports chosen by the OS),
runs each check, sends SIGTERM, and prints one line per check and then `N passed, N failed`.
Exits 1 if any check failed.
"""

import json
import os
import signal
import subprocess
import sys
import time
import traceback
import urllib.request

import numpy as np
import openai
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def start(marsc):
    proc = subprocess.Popen(
        [marsc, "serve", os.path.join(HERE, "ab.plan.yaml"), os.path.join(HERE, "translate.plan.yaml"),
         "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"],
        stdout=subprocess.PIPE, env={**os.environ, "MARS_LOG": "warn"}, text=True)
    line = proc.stdout.readline()
    fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
    http, grpc = fields["http"], fields["grpc"]
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://{http}/v2/health/ready").status == 200:
                return proc, http, grpc
        except Exception:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("marsc serve never became ready")


def check_triton_http(http, grpc):
    c = httpclient.InferenceServerClient(url=http)
    assert c.is_server_live() and c.is_server_ready()
    assert c.is_model_ready("ab")
    meta = c.get_model_metadata("ab")
    assert meta["inputs"] == [{"name": "x", "datatype": "INT64", "shape": [-1]}], meta
    x = httpclient.InferInput("x", [4], "INT64")
    x.set_data_from_numpy(np.array([1, 2, 3, 40], dtype=np.int64))  # binary by default
    r = c.infer("ab", [x])
    assert r.as_numpy("y").tolist() == [1, 2, 3, 40], r.as_numpy("y")
    x = httpclient.InferInput("x", [2], "INT64")
    x.set_data_from_numpy(np.array([5, 6], dtype=np.int64), binary_data=False)
    out = httpclient.InferRequestedOutput("y", binary_data=False)
    r = c.infer("ab", [x], outputs=[out])
    assert r.as_numpy("y").tolist() == [5, 6]
    t = httpclient.InferInput("text", [2], "BYTES")
    t.set_data_from_numpy(np.array([b"twenty four", b"three hundred twenty one"], dtype=np.object_))
    r = c.infer("translate", [t])
    assert [s.decode() for s in r.as_numpy("french")] == ["vingt-quatre", "trois cent vingt et un"], r.as_numpy("french")
    try:
        c.infer("nope", [x])
        raise AssertionError("an unknown model answers")
    except InferenceServerException as e:
        assert "no pipeline" in str(e), e


def check_triton_grpc(http, grpc):
    c = grpcclient.InferenceServerClient(url=grpc)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("ab")
    meta = c.get_model_metadata("ab", as_json=True)
    assert meta["inputs"][0]["datatype"] == "INT64", meta
    x = grpcclient.InferInput("x", [3], "INT64")
    x.set_data_from_numpy(np.array([7, 8, 9], dtype=np.int64))
    r = c.infer("ab", [x])
    assert r.as_numpy("y").tolist() == [7, 8, 9]
    t = grpcclient.InferInput("text", [1], "BYTES")
    t.set_data_from_numpy(np.array([b"twenty four"], dtype=np.object_))
    r = c.infer("translate", [t])
    assert [s.decode() for s in r.as_numpy("french")] == ["vingt-quatre"]
    try:
        c.infer("ab", [grpcclient.InferInput("x", [1], "BYTES")])
        raise AssertionError("a request without data answers")
    except InferenceServerException as e:
        assert e.status() in ("StatusCode.INVALID_ARGUMENT", "INVALID_ARGUMENT"), e.status()


def check_openai(http, grpc):
    c = openai.OpenAI(base_url=f"http://{http}/v1", api_key="unused")
    r = c.completions.create(model="translate", prompt="twenty four")
    assert r.choices[0].text == "vingt-quatre", r
    r = c.chat.completions.create(model="translate", messages=[{"role": "user", "content": "twenty four"}])
    assert r.choices[0].message.content == "vingt-quatre", r
    pieces = [ch.choices[0].text for ch in c.completions.create(
        model="translate", prompt="three hundred twenty one", stream=True)]
    assert "".join(pieces) == "trois cent vingt et un", pieces
    deltas = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="translate", messages=[{"role": "user", "content": "twenty four"}], stream=True)]
    assert "".join(deltas) == "vingt-quatre", deltas
    try:
        c.completions.create(model="ab", prompt="x")
        raise AssertionError("a pipeline without generated text answers completions")
    except openai.BadRequestError as e:
        assert "no Text output" in str(e), e


def check_plain(http, grpc):
    req = urllib.request.Request(f"http://{http}/v1/pipelines/ab", data=json.dumps({"x": 3}).encode(),
                                 headers={"content-type": "application/json"})
    rec = json.load(urllib.request.urlopen(req))
    assert rec["id"] == 1 and rec["ok"] == {"y": 3}, rec


def main():
    marsc = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "debug", "marsc")
    proc, http, grpc = start(marsc)
    passed = failed = 0
    try:
        for check in [check_triton_http, check_triton_grpc, check_openai, check_plain]:
            try:
                check(http, grpc)
                print(f"ok   {check.__name__}")
                passed += 1
            except Exception:
                print(f"FAIL {check.__name__}")
                traceback.print_exc()
                failed += 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    if code != 0:
        print(f"FAIL marsc serve exited {code} after SIGTERM")
        failed += 1
    else:
        print("ok   sigterm_exits_0")
        passed += 1
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
