"""Starting and stopping `ember serve` for the scripts beside this file
(standard library only): `start` runs the command, waits for the address
the server prints, and keeps draining its stderr; `stop` sends SIGTERM and
wants exit code 0."""
import re
import subprocess
import sys
import threading


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
