#!/usr/bin/python3
"""v2 keys API throughput: sequential sets and gets over keep-alive HTTP/1.1 connections, with
WAITERS long-polling `wait=true` clients parked on other keys meanwhile.

    benches/v2-bench.py HOST:PORT [TOTAL] [CLIENTS] [WAITERS]

Prints sets/s and gets/s. Same script against etcd 3.4.23 (--enable-v2=true) and keel
(--enable-v2): see benches/v2-side-by-side.sh.
"""
import http.client, socket, sys, threading, time

host, port = sys.argv[1].rsplit(":", 1)
port = int(port)
total = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
clients = int(sys.argv[3]) if len(sys.argv) > 3 else 16
waiters = int(sys.argv[4]) if len(sys.argv) > 4 else 0

parked = []
for i in range(waiters):
    s = socket.create_connection((host, port))
    s.sendall(f"GET /v2/keys/bench-wait/w{i}?wait=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    parked.append(s)
time.sleep(1 if waiters else 0)

def run(kind):
    per = total // clients
    def worker(c):
        conn = http.client.HTTPConnection(host, port)
        for i in range(per):
            key = f"/v2/keys/bench/c{c}/k{i % 100}"
            if kind == "set":
                conn.request("PUT", key, body=f"value=v{i}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            else:
                conn.request("GET", key)
            r = conn.getresponse()
            r.read()
            if r.status >= 300:
                raise SystemExit(f"{kind} {key}: {r.status}")
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    start = time.time()
    for t in threads: t.start()
    for t in threads: t.join()
    return per * clients / (time.time() - start)

print(f"waiters={waiters} clients={clients} total={total}")
print(f"set: {run('set'):.0f}/s")
print(f"get: {run('get'):.0f}/s")
for s in parked:
    s.close()
