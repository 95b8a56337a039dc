"""The workload and the checks of scripts/prometheus-check (see there).

Drives a running `questboard dev` over HTTP while a real Prometheus scrapes
it, then evaluates every dashboard and alert expression through
Prometheus's query API. Exits non-zero with the reasons on any failure.
"""

import argparse
import base64
import json
import os
import socket
import threading
import pathlib
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

FAILURES = []


def fail(message):
    FAILURES.append(message)
    print(f"prometheus-check: FAIL {message}", file=sys.stderr)


def call(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            text = response.read().decode()
            return response.status, (json.loads(text) if text else None)
    except urllib.error.HTTPError as err:
        text = err.read().decode()
        try:
            return err.code, json.loads(text)
        except ValueError:
            return err.code, text


def listen(api, session, bearer, counts):
    """A member's socket on `session` (a bare WebSocket client: the
    handshake, then frames read and counted until the server closes or the
    run ends), so the run has live delivery to measure."""
    host, port = urllib.parse.urlparse(api).netloc.split(":")
    conn = socket.create_connection((host, int(port)), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET /ws/sessions/{session}?after_seq=0&access_token={bearer} HTTP/1.1\r\n"
                  f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reader = conn.makefile("rb")
    status = reader.readline()
    if b" 101 " not in status:
        fail(f"socket refused: {status!r}")
        return
    while reader.readline() not in (b"\r\n", b""):
        pass

    def read():
        try:
            while True:
                head = reader.read(2)
                if len(head) < 2:
                    return
                opcode, length = head[0] & 0x0F, head[1] & 0x7F
                if length == 126:
                    length = int.from_bytes(reader.read(2), "big")
                elif length == 127:
                    length = int.from_bytes(reader.read(8), "big")
                payload = reader.read(length)
                if opcode == 8:
                    return
                if opcode == 1:
                    kind = json.loads(payload).get("type", "?")
                    counts[kind] = counts.get(kind, 0) + 1
        except (OSError, ValueError):
            return

    threading.Thread(target=read, daemon=True).start()


def token(binary, user, operator=False):
    args = [binary, "token", "--user", user] + (["--operator"] if operator else [])
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def workload(api, binary):
    alice, bob, ops = token(binary, "alice"), token(binary, "bob"), token(binary, "ops", True)
    sessions = []
    for name in ["Keep", "Crypt", "Tower"]:
        status, body = call("POST", f"{api}/api/sessions", alice, {"name": name})
        assert status == 201, (status, body)
        session = body["session_id"]
        sessions.append(session)
        _, invite = call("POST", f"{api}/api/sessions/{session}/invites", alice, {})
        call("POST", f"{api}/api/invites/accept", bob, {"token": invite["token"]})
    counts = {}
    for session in sessions:
        for bearer in (alice, bob):
            listen(api, session, bearer, counts)
    time.sleep(0.5)
    for round_ in range(6):
        for session in sessions:
            call("POST", f"{api}/api/sessions/{session}/turns", alice,
                 {"text": f"I look around ({round_}).\n/state push items \"torch {round_}\""})
            call("POST", f"{api}/api/sessions/{session}/turns", bob,
                 {"text": f"I take it ({round_}).\n/state set pluginData.hp 999\n/image a crypt"})
    # A game master's update, a decision on each kind of proposal.
    first = sessions[0]
    time.sleep(3)
    _, state = call("GET", f"{api}/api/sessions/{first}/state", alice)
    call("POST", f"{api}/api/sessions/{first}/state/updates", alice,
         {"version": state["version"], "operations": [
             {"path": "items", "operation": "push", "value": "rope"}]})
    _, page = call("GET", f"{api}/api/sessions/{first}/state/proposals?status=pending", alice)
    proposals = page["proposals"]
    if len(proposals) >= 2:
        _, state = call("GET", f"{api}/api/sessions/{first}/state", alice)
        call("POST", f"{api}/api/sessions/{first}/state/proposals/{proposals[0]['proposal_id']}/approve",
             alice, {"version": state["version"]})
        call("POST", f"{api}/api/sessions/{first}/state/proposals/{proposals[1]['proposal_id']}/reject",
             alice, {"reason": "no"})
    call("POST", f"{api}/api/sessions/{first}/media", bob, {"type": "image", "prompt": "a map"})
    # Refused requests: no token, a stranger, a bad body.
    call("GET", f"{api}/api/sessions")
    call("GET", f"{api}/api/sessions/{first}", token(binary, "mallory"))
    call("POST", f"{api}/api/sessions", alice, {"name": ""})
    # One legacy import run that fails for good (its root does not exist).
    status, body = call("POST", f"{api}/api/admin/imports/legacy", ops,
                        {"source_url": "file:///nonexistent/qb-promcheck", "mapping": {}})
    assert status == 202, (status, body)
    return ops, body["job_id"], counts


def wait_job(api, ops, job_id, seconds=60):
    deadline = time.time() + seconds
    while time.time() < deadline:
        _, job = call("GET", f"{api}/api/admin/jobs/{job_id}", ops)
        if job and job.get("status") == "failed":
            return
        time.sleep(0.5)
    fail(f"the legacy import job {job_id} did not fail within {seconds} s")


def query(prometheus, expr):
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as err:
        return json.loads(err.read().decode())


def expressions(dashboards):
    found = []
    for path in sorted(pathlib.Path(dashboards).glob("*.json")):
        dashboard = json.loads(path.read_text())
        for panel in dashboard.get("panels", []):
            for target in panel.get("targets", []):
                # Template variables: every value.
                expr = target["expr"].replace("$job", ".*").replace("$kind", ".*")
                found.append((f"{path.name}: {panel['title']}", expr))
    rules = (pathlib.Path(dashboards) / "alerts.yml").read_text()
    for match in re.finditer(r"- alert: (\S+)\n\s+expr: (\|\n((?:\s{10,}.*\n)+)|(.*)\n)", rules):
        name, block, inline = match.group(1), match.group(3), match.group(4)
        expr = " ".join(line.strip() for line in block.splitlines()) if block else inline
        found.append((f"alerts.yml: {name}", expr))
    return found


def metric_names(expr):
    return set(re.findall(r"\b(questboard_[a-z_]+)", expr))


def exposed(metrics_url):
    with urllib.request.urlopen(metrics_url, timeout=30) as response:
        text = response.read().decode()
    names = set()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return text, names


def figure(prometheus, expr):
    result = query(prometheus, expr).get("data", {}).get("result", [])
    return sum(float(r["value"][1]) for r in result)


def main():
    parser = argparse.ArgumentParser()
    for flag in ["--bin", "--api", "--metrics", "--prometheus", "--dashboards"]:
        parser.add_argument(flag, required=True)
    args = parser.parse_args()

    # The workload starts once Prometheus has scraped the server a few
    # times: every counter's 0 is then a sample before its first event.
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            up = query(args.prometheus, 'count_over_time(up{job="questboard-dev"}[1m])')
            result = up.get("data", {}).get("result", [])
            if result and float(result[0]["value"][1]) >= 3:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.5)
    else:
        fail("Prometheus did not scrape questboard dev")
        return 1
    started = time.time()
    ops, job_id, counts = workload(args.api, args.bin)
    wait_job(args.api, ops, job_id)
    # Enough scrapes after the failure for increase() and the rules.
    time.sleep(max(0.0, 25 - (time.time() - started)))

    text, names = exposed(args.metrics)
    check = subprocess.run(["promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True)
    # promtool check metrics exits 3 for lint warnings only; errors are 1.
    if check.returncode not in (0, 3):
        fail(f"promtool check metrics: {check.stdout}{check.stderr}")
    elif check.stdout.strip() or check.stderr.strip():
        print("prometheus-check: promtool check metrics says:\n"
              + check.stdout + check.stderr, file=sys.stderr)

    checked = 0
    for where, expr in expressions(args.dashboards):
        answer = query(args.prometheus, expr)
        if answer.get("status") != "success":
            fail(f"{where}: {answer.get('error')} in {expr}")
        for name in metric_names(expr):
            if name not in names and not any(name == n.rsplit("_", 1)[0] for n in names
                                             if n.endswith(("_bucket", "_sum", "_count"))):
                if name + "_bucket" not in names:
                    fail(f"{where}: {name} is not exposed by the binary")
        checked += 1
    print(f"prometheus-check: {checked} dashboard and alert expressions evaluated",
          file=sys.stderr)

    firing = query(args.prometheus,
                   'ALERTS{alertname="QuestboardLegacyImportFailed"}')["data"]["result"]
    if not firing:
        series = query(args.prometheus, 'questboard_legacy_import_runs_total[2m]')
        fail("QuestboardLegacyImportFailed did not go off for the failed run; "
             f"the counter's samples: {json.dumps(series.get('data', {}).get('result'))}")

    direct = figure(args.prometheus, 'questboard_events_published_total{path="direct"}')
    relay = figure(args.prometheus, 'questboard_events_published_total{path="relay"}')
    gaps = figure(args.prometheus, 'questboard_events_replayed_total{reason="gap"}')
    system = figure(args.prometheus, 'questboard_state_updates_total{source="system"}')
    print(f"prometheus-check: realtime figures of the run: events published directly {direct:.0f}, "
          f"by the relay {relay:.0f}, replayed for gaps {gaps:.0f}; "
          f"turns' state changes counted {system:.0f}", file=sys.stderr)
    print(f"prometheus-check: the run's sockets received {json.dumps(counts, sort_keys=True)}",
          file=sys.stderr)
    if not counts.get("turn.delta"):
        fail("the run's sockets received no streamed chunks")
    if system == 0:
        fail("questboard_state_updates_total{source=\"system\"} stayed 0 though turns changed the state")
    if FAILURES:
        print(f"prometheus-check: {len(FAILURES)} failure(s)", file=sys.stderr)
        return 1
    print("prometheus-check: ok", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
