#!/usr/bin/env python3
"""Peak RSS of a server under the worst request bodies we can construct, against the
same server under ordinary full-size batches (the baseline), in one run.

    python3 bench/worst_bodies.py target/release/sluice [--connections 16] [--seconds 20] [--runs 3]

For each run it starts `sluice serve` twice on fresh data directories (a 127.0.0.1 port of
its own), drives it with CONNECTIONS threads for SECONDS, then reads the kernel's
high-water mark of the server's resident memory (VmHWM in /proc/PID/status). Prints one
JSON line per run and the medians. Standard library only.

The worst bodies (each one at a time per connection, cycled):
  envelope    a 500 KB batch: 2,500 tiny items under a ~440 KB envelope `context`
  stored      2,000 tiny items under a 20 KB envelope `context` (stores the most a
              request may: 4 x max_batch_bytes)
  bomb        a gzip body of ~4 KB that inflates to 3 MB
  cap         a 4 MB identity body (the hard cap), not JSON
  deep        a 32 KB single call nested 16,000 levels deep
Ordinary: 500 KB batches of ~800-byte e-commerce events.
"""
import argparse
import base64
import gzip
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

AUTH = "Basic " + base64.b64encode(b"wk_bench:").decode()


def worst_bodies():
    tiny = '{"type":"track","userId":"u","event":"E"}'
    items = ",".join([tiny] * 2500)
    pad = "x" * (500 * 1024 - len(items) - 64)
    envelope = f'{{"batch":[{items}],"context":{{"pad":"{pad}"}}}}'.encode()
    items = ",".join([tiny] * 2000)
    stored = f'{{"batch":[{items}],"context":{{"pad":"{"y" * 20000}"}}}}'.encode()
    bomb = gzip.compress(b" " * (3 * 1024 * 1024))
    cap = b"z" * (4 * 1024 * 1024)
    deep = ('{"userId":"u","event":"E","properties":{"a":' + "[" * 16000 + "]" * 16000 + "}}").encode()
    return [
        ("/v1/batch", envelope, {}),
        ("/v1/batch", stored, {}),
        ("/v1/batch", bomb, {"Content-Encoding": "gzip"}),
        ("/v1/batch", cap, {}),
        ("/v1/track", deep, {}),
    ]


def ordinary_bodies():
    events = []
    n = 0
    size = 0
    while size < 490 * 1024:
        n += 1
        ev = {
            "type": "track",
            "userId": f"user-{n % 997}",
            "event": "Order Completed",
            "properties": {
                "order_id": f"o-{n}",
                "total": 99.5,
                "products": [{"sku": f"s-{i}", "price": 9.95, "quantity": 2} for i in range(4)],
            },
            "context": {"library": {"name": "analytics.js", "version": "4.4.7"}, "ip": "203.0.113.7",
                        "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Chrome/120", "locale": "en-US"},
        }
        text = json.dumps(ev)
        size += len(text) + 1
        events.append(text)
    return [("/v1/batch", ("{\"batch\":[" + ",".join(events) + "]}").encode(), {})]


def drive(port, bodies, connections, seconds, counts):
    deadline = time.time() + seconds

    def worker(k):
        conn = None
        i = k
        while time.time() < deadline:
            path, body, headers = bodies[i % len(bodies)]
            i += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                h = {"Authorization": AUTH, "Content-Type": "application/json"}
                h.update(headers)
                conn.request("POST", path, body=body, headers=h)
                resp = conn.getresponse()
                resp.read()
                with lock:
                    counts[resp.status] = counts.get(resp.status, 0) + 1
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException):
                with lock:
                    counts["error"] = counts.get("error", 0) + 1
                if conn is not None:
                    conn.close()
                conn = None

    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def status_kb(pid, field):
    with open(f"/proc/{pid}/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else 0


def one(binary, bodies, connections, seconds):
    data = tempfile.mkdtemp(prefix="sluice-worst-")
    cfg = os.path.join(data, "sluice.toml")
    with open(cfg, "w") as f:
        f.write('admin_token = "bench-admin"\n[[sources]]\nname = "bench"\nwrite_key = "wk_bench"\n')
    proc = subprocess.Popen([binary, "serve", "--listen", "127.0.0.1:0", "--data-dir", data, "--config", cfg],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    port = None
    for line in proc.stdout:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            port = int(m.group(1))
            break
    threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
    idle = status_kb(proc.pid, "VmRSS")
    counts = {}
    drive(port, bodies, connections, seconds, counts)
    peak = status_kb(proc.pid, "VmHWM")
    proc.terminate()
    proc.wait()
    subprocess.run(["rm", "-rf", data])
    return {"idle_rss_mb": round(idle / 1024, 1), "peak_rss_mb": round(peak / 1024, 1),
            "answers": {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    worst, ordinary = worst_bodies(), ordinary_bodies()
    rows = {"ordinary": [], "worst": []}
    for r in range(a.runs):
        for name, bodies in (("ordinary", ordinary), ("worst", worst)):
            res = one(a.binary, bodies, a.connections, a.seconds)
            res.update({"run": r + 1, "load": name, "connections": a.connections})
            print(json.dumps(res), flush=True)
            rows[name].append(res["peak_rss_mb"])
    print(json.dumps({"median_peak_rss_mb": {k: statistics.median(v) for k, v in rows.items()}}))


if __name__ == "__main__":
    sys.exit(main())
