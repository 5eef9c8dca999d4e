"""Segment's official Python library → Sluice → the classic Webhooks destination → a real
HTTP receiver started here. Checks that the receiver gets each event with the fields the
client sent and a valid X-Signature.

Needs a running Sluice with a source whose write key is SLUICE_HOOKS_WRITE_KEY feeding a
webhook destination to http://127.0.0.1:SLUICE_HOOKS_PORT/in with shared secret
SLUICE_HOOKS_SECRET (see .ci/run).
"""
import hashlib
import hmac
import http.server
import json
import os
import sys
import threading
import time
import uuid

from segment.analytics.client import Client

URL = os.environ["SLUICE_URL"]
WRITE_KEY = os.environ["SLUICE_HOOKS_WRITE_KEY"]
PORT = int(os.environ.get("SLUICE_HOOKS_PORT", "18099"))
SECRET = os.environ["SLUICE_HOOKS_SECRET"]

received = []
arrived = threading.Condition()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with arrived:
            received.append((self.path, dict(self.headers), body))
            arrived.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = uuid.uuid4().hex[:8]
    user = f"hook-user-{run}"
    errors = []
    client = Client(WRITE_KEY, host=URL, on_error=lambda e, items: errors.append(repr(e)), max_retries=1)
    sent = {
        "identify": client.identify(user, {"email": f"{run}@example.com", "plan": "pro"})[1],
        "track": client.track(user, "Order Completed", {"revenue": 42.5, "currency": "EUR",
                                                        "products": [{"sku": "A-1", "qty": 2}]})[1],
        "page": client.page(user, category="Docs", name="Install", properties={"path": "/docs"})[1],
    }
    client.flush()
    client.join()
    if errors:
        sys.exit(f"client reported errors: {errors}")
    wanted = {m["messageId"] for m in sent.values()}

    def got():
        return {json.loads(b)["messageId"]: (p, h, b) for p, h, b in received} if received else {}

    deadline = time.monotonic() + 60
    with arrived:
        while not wanted <= set(got()):
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit(f"webhook receiver: only {sorted(set(got()) & wanted)} of {sorted(wanted)} arrived")
            arrived.wait(left)
    by_id = got()
    problems = []
    for kind, msg in sent.items():
        path, headers, body = by_id[msg["messageId"]]
        e = json.loads(body)
        headers = {k.lower(): v for k, v in headers.items()}
        expected_sig = hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
        checks = {
            "path": path == "/in",
            "signature": headers.get("x-signature") == expected_sig,
            "content-type": headers.get("content-type") == "application/json",
            "type": e.get("type") == kind,
            "userId": e.get("userId") == user,
            "library": e.get("context", {}).get("library", {}).get("name") == "analytics-python",
            "timestamps": all(k in e for k in ("timestamp", "receivedAt", "sentAt", "originalTimestamp")),
        }
        if kind == "identify":
            checks["traits"] = e.get("traits") == msg["traits"]
        if kind == "track":
            checks["event"] = e.get("event") == "Order Completed"
            checks["properties"] = e.get("properties") == msg["properties"]
        if kind == "page":
            checks["page"] = e.get("name") == "Install" and e.get("properties", {}).get("path") == "/docs"
        failed = [k for k, ok in checks.items() if not ok]
        if failed:
            problems.append(f"{kind}: {failed} in {body!r} with {headers}")
    server.shutdown()
    if problems:
        sys.exit("python → webhook: " + "\n".join(problems))
    print(f"python → webhook: {len(sent)} events arrived signed, with the fields the client sent")


if __name__ == "__main__":
    main()
