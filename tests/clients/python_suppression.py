"""Segment's official Python library against a suppressed user: Sluice acknowledges the
suppressed user's events (the client reports no error) and never stores or delivers them,
while another user's events in the same flush arrive at the webhook destination.

Needs the same running Sluice as python_webhook.py (SLUICE_URL, SLUICE_ADMIN_TOKEN,
SLUICE_HOOKS_WRITE_KEY feeding a webhook to 127.0.0.1:SLUICE_HOOKS_PORT).
"""
import base64
import http.server
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

from segment.analytics.client import Client

URL = os.environ["SLUICE_URL"]
TOKEN = os.environ["SLUICE_ADMIN_TOKEN"]
WRITE_KEY = os.environ["SLUICE_HOOKS_WRITE_KEY"]
PORT = int(os.environ.get("SLUICE_HOOKS_PORT", "18099"))
SOURCE = "hooks-src"

received = []
arrived = threading.Condition()


class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        with arrived:
            received.append(json.loads(body))
            arrived.notify_all()
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def admin(method, path, body=None):
    req = urllib.request.Request(
        f"{URL}/admin/v1{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req) as resp:
        return json.load(resp)


def suppressed_counter():
    with urllib.request.urlopen(f"{URL}/metrics") as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("sluice_events_suppressed_total") and f'source="{SOURCE}"' in line:
                return float(line.split()[-1])
    return 0.0


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    run = uuid.uuid4().hex[:8]
    hidden, visible = f"suppressed-{run}", f"visible-{run}"
    reg = admin("POST", "/regulations", {"regulationType": "SUPPRESS_ONLY", "subjectType": "USER_ID",
                                         "subjectIds": [hidden]})
    reg_id = reg["data"]["regulateId"]
    before = suppressed_counter()

    errors = []
    client = Client(WRITE_KEY, host=URL, on_error=lambda e, items: errors.append(repr(e)), max_retries=1)
    hidden_ids = [
        client.identify(hidden, {"email": f"{run}@hidden.example", "plan": "secret"})[1]["messageId"],
        client.track(hidden, "Secret Thing", {"n": 1})[1]["messageId"],
        client.page(hidden, name="Private")[1]["messageId"],
    ]
    marker = client.track(visible, "Visible Thing", {"n": 2})[1]["messageId"]
    client.flush()
    client.join()
    if errors:
        sys.exit(f"client reported errors (suppressed events must be acknowledged): {errors}")

    deadline = time.monotonic() + 60
    with arrived:
        while marker not in {e.get("messageId") for e in received}:
            left = deadline - time.monotonic()
            if left <= 0:
                sys.exit("the visible user's event never reached the webhook")
            arrived.wait(left)

    problems = []
    delivered = [e for e in received if e.get("userId") == hidden]
    if delivered:
        problems.append(f"suppressed events were delivered: {delivered}")
    stored = admin("GET", f"/sources/{SOURCE}/events?limit=1000")["data"]
    stored_hidden = [e for e in stored if e["event"].get("userId") == hidden]
    if stored_hidden:
        problems.append(f"suppressed events were stored: {stored_hidden}")
    if not any(e["event"].get("messageId") == marker for e in stored):
        problems.append("the visible user's event is not stored")
    counted = suppressed_counter() - before
    if counted != len(hidden_ids):
        problems.append(f"sluice_events_suppressed_total grew by {counted}, not {len(hidden_ids)}")
    status = admin("GET", f"/regulations/{reg_id}")["data"]["regulation"]["overallStatus"]
    if status not in ("INITIALIZED", "RUNNING", "FINISHED"):
        problems.append(f"regulation status {status}")
    # The Profile API (HTTP Basic, the admin token as user name) knows the visible user
    # once the profile consumer filed it, and never the suppressed one.
    auth = "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode()

    def profile(user):
        req = urllib.request.Request(
            f"{URL}/v1/spaces/default/collections/users/profiles/user_id:{user}/external_ids",
            headers={"Authorization": auth})
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    deadline = time.monotonic() + 30
    while profile(visible) != 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    if profile(visible) != 200:
        problems.append("the visible user has no profile")
    if profile(hidden) != 404:
        problems.append("the suppressed user has a profile")
    server.shutdown()
    if problems:
        sys.exit("python suppression: " + "\n".join(problems))
    print(f"python suppression: {len(hidden_ids)} events of a suppressed user acknowledged, "
          f"not stored, not delivered; the other user's event arrived")


if __name__ == "__main__":
    main()
