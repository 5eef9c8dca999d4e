"""p50/p99 of each console screen's page and the admin API calls the screen makes, against
a running Sluice (bench/console.sh loads it with ~1 M events first). Requests are
sequential, on one kept-alive connection; /healthz is the baseline.

Usage: console_latency.py URL ADMIN_TOKEN ROUNDS
"""
import http.client
import json
import statistics
import sys
import time
import urllib.parse

url, token, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(url)
conn = http.client.HTTPConnection(u.hostname, u.port)
auth = {"Authorization": f"Bearer {token}"}


def get(path, headers=None):
    conn.request("GET", path, headers=headers or {})
    r = conn.getresponse()
    r.read()
    return r.status


# A destination to look at (its delivery screen reads the log's backlog).
body = json.dumps({"type": "webhook", "sources": ["bench"], "enabled": False,
                   "settings": {"hooks": [{"hook": "https://example.com/in"}]}})
conn.request("PUT", "/admin/v1/destinations/bench-console", body=body,
             headers={**auth, "Content-Type": "application/json"})
conn.getresponse().read()

paths = [
    ("baseline /healthz", "/healthz", {}),
    ("page /console/sources", "/console/sources", {}),
    ("script", "/console/assets/console.js", {}),
    ("Sources: /admin/v1/sources", "/admin/v1/sources", auth),
    ("Debugger: recent events", "/admin/v1/sources/bench/events?limit=20", auth),
    ("Refused: /rejected", "/admin/v1/sources/bench/rejected?limit=100", auth),
    ("Destinations", "/admin/v1/destinations", auth),
    ("Destination", "/admin/v1/destinations/bench-console", auth),
    ("Event Delivery", "/admin/v1/destinations/bench-console/delivery", auth),
    ("Dead letters", "/admin/v1/destinations/bench-console/dead-letters?limit=20", auth),
    ("Catalog", "/admin/v1/catalog", auth),
    ("Privacy: regulations", "/admin/v1/regulations", auth),
    ("Access: audit", "/admin/v1/audit?limit=100", auth),
]
out = {}
for name, path, headers in paths:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        status = get(path, headers)
        times.append((time.perf_counter() - t) * 1000)
        if status != 200:
            sys.exit(f"{path} answered {status}")
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    out[name] = {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2)}
    print(f"{name:36} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
print(json.dumps(out))
