"""Starting and stopping `ember serve` for the scripts beside this file
(standard library only): `start` runs the command, waits for the address
the server prints, and keeps draining its stderr; `stop` sends SIGTERM and
wants exit code 0; `post_json` and `stream_events` make requests."""
import http.client
import json
import re
import subprocess
import sys
import threading
import urllib.parse


def start(cmd, echo=False):
    """Runs `cmd` (an `ember serve --port 0 ...` command line) and returns
    the process, its base URL (`http://HOST:PORT`) and the line that named
    it. With `echo` the server's stderr goes on to this process's."""
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if echo:
            sys.stderr.write(line)
        m = re.search(r"on (http://[0-9.]+:[0-9]+)", line)
        if m:
            rest = (lambda: [sys.stderr.write(l) for l in proc.stderr]) if echo else (lambda: [None for _ in proc.stderr])
            threading.Thread(target=rest, daemon=True).start()
            return proc, m.group(1), line
    sys.exit("the server did not start")


def stop(proc, timeout=60):
    """SIGTERM; the server must exit 0."""
    if proc:
        proc.terminate()
        code = proc.wait(timeout=timeout)
        if code != 0:
            sys.exit(f"the server exited with {code} after SIGTERM")


def post_json(url, path, body, timeout=600):
    """POSTs `body` as JSON to `url + path`; the parsed answer (an error
    unless 200)."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"{path}: HTTP {r.status}: {data[:300]!r}")
    return json.loads(data)


def stream_events(url, path, body, timeout=600):
    """POSTs `body` (a streamed request) and yields each server-sent
    event's JSON as it arrives, up to `data: [DONE]`."""
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    try:
        c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status != 200:
            raise RuntimeError(f"{path}: HTTP {r.status}: {r.read()[:300]!r}")
        for line in r:
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            if line[6:] == b"[DONE]":
                break
            yield json.loads(line[6:])
    finally:
        c.close()
