#!/usr/bin/env python3
"""Replays a keel request trace (see apply_etcd_trace.rs) against a fresh etcd 3.4 and prints
one canonical response line per request, in the format apply_etcd_trace.rs writes.

usage: apply_etcd_trace.py TRACE.jsonl > apply_etcd_trace.expected
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

PORT = 23917


def call(path, body):
    req = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/v3/kv/{path}", data=body.encode(), method="POST"
    )
    try:
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        return json.loads(e.read())


def hexb(s):
    return base64.b64decode(s or "").hex()


def kv(k):
    return ":".join([
        hexb(k.get("key")), str(k.get("create_revision", "0")), str(k.get("mod_revision", "0")),
        str(k.get("version", "0")), hexb(k.get("value")), str(k.get("lease", "0")),
    ])


def kvs(lst):
    return ",".join(kv(k) for k in lst or [])


def rev(r):
    return str((r.get("header") or {}).get("revision", "0"))


def range_line(r):
    return f"R {rev(r)} {r.get('count', '0')} {1 if r.get('more') else 0} [{kvs(r.get('kvs'))}]"


def put_line(r):
    prev = kv(r["prev_kv"]) if r.get("prev_kv") else "-"
    return f"P {rev(r)} {prev}"


def del_line(r):
    return f"D {rev(r)} {r.get('deleted', '0')} [{kvs(r.get('prev_kvs'))}]"


def txn_line(r):
    parts = []
    for op in r.get("responses") or []:
        if "response_range" in op:
            parts.append(range_line(op["response_range"]))
        elif "response_put" in op:
            parts.append(put_line(op["response_put"]))
        elif "response_delete_range" in op:
            parts.append(del_line(op["response_delete_range"]))
        elif "response_txn" in op:
            parts.append(txn_line(op["response_txn"]))
        else:
            parts.append("N")
    return f"T {rev(r)} {1 if r.get('succeeded') else 0} {{{'; '.join(parts)}}}"


def main():
    trace = sys.argv[1]
    data = tempfile.mkdtemp(prefix="keel-trace-etcd-")
    etcd = subprocess.Popen(
        ["etcd", "--data-dir", data,
         "--listen-client-urls", f"http://127.0.0.1:{PORT}",
         "--advertise-client-urls", f"http://127.0.0.1:{PORT}",
         "--listen-peer-urls", f"http://127.0.0.1:{PORT + 1}",
         "--initial-advertise-peer-urls", f"http://127.0.0.1:{PORT + 1}",
         "--initial-cluster", f"default=http://127.0.0.1:{PORT + 1}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                call("range", '{"key":"AA=="}')
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        for line in open(trace):
            kind, body = line.rstrip("\n").split(" ", 1)
            try:
                r = call(kind, body)
            except (urllib.error.URLError, ConnectionError):
                # etcd 3.4 panics on a few txns keel answers cleanly; see apply_kv.rs.
                print("etcd crashed")
                return
            if "error" in r:
                print(f"E {r['code']} {r['error']}")
            elif kind == "range":
                print(range_line(r))
            elif kind == "put":
                print(put_line(r))
            elif kind == "deleterange":
                print(del_line(r))
            elif kind == "txn":
                print(txn_line(r))
            elif kind == "compaction":
                print(f"C {rev(r)}")
    finally:
        etcd.terminate()
        etcd.wait()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
