"""Segment's official Python library (segment-analytics-python from PyPI) against a running
Sluice: only the host changes. Sends every call type, flushes, and checks through the admin
API that each event is stored with the right fields and timestamps.

Usage: python_client.py  (reads SLUICE_URL, SLUICE_WRITE_KEY, SLUICE_ADMIN_TOKEN)
"""
import datetime
import json
import os
import sys
import urllib.request
import uuid

import segment.analytics as analytics_module
from segment.analytics.client import Client

URL = os.environ["SLUICE_URL"]
WRITE_KEY = os.environ["SLUICE_WRITE_KEY"]
TOKEN = os.environ["SLUICE_ADMIN_TOKEN"]
SOURCE = os.environ.get("SLUICE_SOURCE", "web")

errors = []


def on_error(error, items):
    errors.append(f"{error!r} for {len(items)} items")


def stored_events(user_ids):
    req = urllib.request.Request(
        f"{URL}/admin/v1/sources/{SOURCE}/events?limit=1000",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    with urllib.request.urlopen(req) as resp:
        data = json.load(resp)["data"]
    return [e["event"] for e in data if e["event"].get("userId") in user_ids
            or e["event"].get("anonymousId") in user_ids]


def parse(ts):
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def main():
    run = uuid.uuid4().hex[:8]
    user, anon = f"py-user-{run}", f"py-anon-{run}"
    when = datetime.datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=datetime.timezone.utc)
    sent = {}
    for gzip in (False, True):
        client = Client(WRITE_KEY, host=URL, on_error=on_error, gzip=gzip, max_retries=1)
        tag = "gz" if gzip else "plain"
        sent[f"identify-{tag}"] = client.identify(user, {"email": f"{run}@example.com", "plan": "pro"},
                                                  timestamp=when)[1]
        sent[f"track-{tag}"] = client.track(user, "Order Completed",
                                            {"revenue": 42.5, "currency": "EUR", "tag": tag}, timestamp=when)[1]
        sent[f"page-{tag}"] = client.page(anonymous_id=anon, category="Docs", name="Install",
                                          properties={"url": "https://example.com/docs"}, timestamp=when)[1]
        sent[f"screen-{tag}"] = client.screen(user, category="App", name="Home", timestamp=when)[1]
        sent[f"group-{tag}"] = client.group(user, f"group-{run}", {"name": "Acme"}, timestamp=when)[1]
        sent[f"alias-{tag}"] = client.alias(anon, user, timestamp=when)[1]
        client.flush()
        client.join()
    if errors:
        sys.exit(f"client reported errors: {errors}")

    events = {e["messageId"]: e for e in stored_events({user, anon})}
    problems = []
    for name, msg in sent.items():
        e = events.get(msg["messageId"])
        if e is None:
            problems.append(f"{name}: messageId {msg['messageId']} not stored")
            continue
        kind = name.split("-")[0]
        checks = {
            "type": e.get("type") == kind,
            "library": e.get("context", {}).get("library", {}).get("name") == "analytics-python",
            "originalTimestamp": parse(e["originalTimestamp"]) == when,
            "receivedAt": abs(parse(e["receivedAt"]) - datetime.datetime.now(datetime.timezone.utc)).total_seconds() < 300,
            # The client sent sentAt ~now for an event dated 2024: the skew correction keeps
            # the gap between the event and its sending.
            "timestamp": parse(e["timestamp"]) < parse(e["receivedAt"]) - datetime.timedelta(days=300),
            "sentAt": "sentAt" in e,
            "no writeKey": "writeKey" not in e,
        }
        if kind == "identify":
            checks["traits"] = e.get("traits", {}).get("plan") == "pro" and e.get("userId") == user
        if kind == "track":
            checks["event"] = e.get("event") == "Order Completed" and e["properties"]["revenue"] == 42.5
        if kind == "page":
            checks["page"] = e.get("name") == "Install" and e.get("anonymousId") == anon and "userId" not in e
        if kind == "screen":
            checks["screen"] = e.get("name") == "Home"
        if kind == "group":
            checks["group"] = e.get("groupId") == f"group-{run}" and e["traits"]["name"] == "Acme"
        if kind == "alias":
            checks["alias"] = e.get("previousId") == anon and e.get("userId") == user
        failed = [k for k, ok in checks.items() if not ok]
        if failed:
            problems.append(f"{name}: {failed} in {json.dumps(e)}")
    if problems:
        sys.exit("python client: " + "\n".join(problems))
    print(f"python client: {len(sent)} events stored with the right fields")


if __name__ == "__main__":
    main()
