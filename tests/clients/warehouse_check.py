"""The warehouse proof: Segment's official Python library sends a fixed set of events
(identify with nested traits, two track events, page, screen, group, alias) — the Node
library sends the same set before (warehouse_send.mjs) — and SQL queries on the warehouse
return exactly the rows and columns in warehouse_expected.txt, Segment's layout as
../../docs/configuration.md "Warehouses" and the reference describe it.

Usage: warehouse_check.py  (reads SLUICE_URL, SLUICE_WAREHOUSE_WRITE_KEY,
SLUICE_WAREHOUSE_DSN (a postgres:// URL), SLUICE_WAREHOUSE_SCHEMA, and SLUICE_ADMIN_TOKEN to
show the server's warehouse status on a failure; psql on PATH)
With --write, writes what it found to the expected file instead (for review).
"""
import datetime
import difflib
import json
import os
import subprocess
import sys
import time
import urllib.request

from segment.analytics.client import Client

HERE = os.path.dirname(os.path.abspath(__file__))
EXPECTED = os.path.join(HERE, "warehouse_expected.txt")
URL = os.environ["SLUICE_URL"]
WRITE_KEY = os.environ["SLUICE_WAREHOUSE_WRITE_KEY"]
DSN = os.environ["SLUICE_WAREHOUSE_DSN"]
S = os.environ.get("SLUICE_WAREHOUSE_SCHEMA", "ci_wh")

# (title, SQL). Columns whose values change from run to run (received_at, sent_at,
# timestamp: skew-corrected from the send time, uuid_ts) are checked for presence only.
QUERIES = [
    ("tables", f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{S}' ORDER BY 1"),
    ("columns", f"SELECT table_name, column_name, data_type FROM information_schema.columns "
                f"WHERE table_schema = '{S}' AND table_name <> 'sluice_discards' ORDER BY 1, 2"),
    ("identifies", f"SELECT id, user_id, anonymous_id, email, plan, address_city, address_street, logins, vip, "
                   f"original_timestamp, context_library_name FROM {S}.identifies ORDER BY id"),
    ("users", f"SELECT id, email, plan, address_city, address_street, logins, vip FROM {S}.users ORDER BY id"),
    ("tracks", f"SELECT id, event, event_text, user_id, original_timestamp FROM {S}.tracks ORDER BY id"),
    ("order_completed", f"SELECT id, event, event_text, user_id, order_id, revenue, currency, products "
                        f"FROM {S}.order_completed ORDER BY id"),
    ("signed_up", f"SELECT id, event, user_id, method FROM {S}.signed_up ORDER BY id"),
    ("pages", f"SELECT id, anonymous_id, name, category, url, path FROM {S}.pages ORDER BY id"),
    ("screens", f"SELECT id, user_id, name FROM {S}.screens ORDER BY id"),
    ("groups", f"SELECT id, user_id, group_id, name, employees FROM {S}.groups ORDER BY id"),
    ("accounts", f"SELECT id, name, employees FROM {S}.accounts ORDER BY id"),
    ("aliases", f"SELECT id, user_id, previous_id FROM {S}.aliases ORDER BY id"),
    ("run-dependent columns are set",
     " UNION ALL ".join(
         f"SELECT '{t}', count(*) FILTER (WHERE received_at IS NULL OR sent_at IS NULL OR timestamp IS NULL "
         f"OR uuid_ts IS NULL) FROM {S}.{t}"
         for t in ["identifies", "tracks", "order_completed", "signed_up", "pages", "screens", "groups", "aliases"])),
    ("discards", f"SELECT count(*) FROM {S}.sluice_discards"),
]


def send():
    errors = []
    client = Client(WRITE_KEY, host=URL, on_error=lambda e, items: errors.append(repr(e)), max_retries=1)
    lib = "py"
    user, anon = f"wh-user-{lib}", f"wh-anon-{lib}"
    when = datetime.datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=datetime.timezone.utc)
    calls = [
        ("identify", lambda mid: client.identify(user, {
            "email": f"{lib}@example.com", "plan": "pro",
            "address": {"city": "Berlin", "street": "Main St 1"}, "logins": 3, "vip": True},
            anonymous_id=anon, timestamp=when, message_id=mid)),
        ("track", lambda mid: client.track(user, "Order Completed", {
            "order_id": "o-1", "revenue": 42.5, "currency": "EUR",
            "products": [{"sku": "A", "price": 10}], "coupon": None}, timestamp=when, message_id=mid)),
        ("track", lambda mid: client.track(user, "Signed Up", {"method": "email"}, timestamp=when, message_id=mid)),
        ("page", lambda mid: client.page(anonymous_id=anon, category="Docs", name="Install", properties={
            "url": "https://example.com/docs/install", "path": "/docs/install"}, timestamp=when, message_id=mid)),
        ("screen", lambda mid: client.screen(user, name="Home", timestamp=when, message_id=mid)),
        ("group", lambda mid: client.group(user, f"wh-group-{lib}", {"name": "Acme", "employees": 50},
                                           timestamp=when, message_id=mid)),
        ("alias", lambda mid: client.alias(anon, user, timestamp=when, message_id=mid)),
    ]
    for i, (kind, call) in enumerate(calls):
        call(f"wh-{lib}-{i}-{kind}")
    client.flush()
    client.join()
    if errors:
        sys.exit(f"python client reported errors: {errors}")


def query(sql):
    out = subprocess.run(["psql", DSN, "-X", "-A", "-F", "|", "-P", "null=NULL", "-c", sql],
                         capture_output=True, text=True, env={**os.environ, "PGTZ": "UTC"})
    if out.returncode != 0:
        return None, out.stderr.strip()
    return out.stdout, None


def warehouse_status():
    """What the server says of its warehouses (lag, latest syncs), to tell a load that
    failed from one that never ran."""
    token = os.environ.get("SLUICE_ADMIN_TOKEN")
    if not token:
        return "(SLUICE_ADMIN_TOKEN not set)"
    out = []
    for path in ["/admin/v1/warehouses"]:
        req = urllib.request.Request(URL + path, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                data = json.load(resp)["data"]
        except Exception as e:  # noqa: BLE001 - a diagnostic: say what failed
            return f"(cannot read {path}: {e})"
        for w in data:
            out.append(json.dumps(w))
            req = urllib.request.Request(f"{URL}/admin/v1/warehouses/{w['name']}/syncs",
                                         headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                out.extend(json.dumps(x) for x in json.load(resp)["data"][:5])
    return "\n".join(out)


def report():
    parts = []
    for title, sql in QUERIES:
        out, err = query(sql)
        parts.append(f"## {title}\n{out if out is not None else 'ERROR: ' + err + chr(10)}")
    return "".join(parts)


def main():
    send()
    # 14 events (7 per library): the last table to fill is the one the check waits for.
    deadline = time.monotonic() + 60
    while True:
        out, _ = query(f"SELECT count(*) FROM {S}.tracks")
        loaded = out is not None and out.splitlines()[1] == "4"
        out, _ = query(f"SELECT count(*) FROM {S}.aliases")
        loaded = loaded and out is not None and out.splitlines()[1] == "2"
        if loaded or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # Read once the wait is over: a report taken before the check may predate the load's
    # commit.
    got = report()
    if "--write" in sys.argv:
        with open(EXPECTED, "w") as f:
            f.write(got)
        print(f"wrote {EXPECTED}: review it against the reference before committing")
        return
    with open(EXPECTED) as f:
        want = f.read()
    if got != want:
        diff = difflib.unified_diff(want.splitlines(), got.splitlines(), "expected", "warehouse", lineterm="")
        sys.exit("warehouse rows differ from warehouse_expected.txt:\n" + "\n".join(diff)
                 + "\n\nthe server's warehouses and their latest syncs:\n" + warehouse_status())
    print(f"warehouse: {len(QUERIES)} queries return exactly the expected rows and columns")


if __name__ == "__main__":
    main()
