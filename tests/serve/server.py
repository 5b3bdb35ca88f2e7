"""A server started as a user would, for the tests: python inference.py --serve --port 0 in a project copy."""
import re
import select
import signal
import time
import urllib.error
import urllib.request

import pytest


class Server:
    """python inference.py --serve --port 0 ... in the project; the URL from its first line."""

    def __init__(self, project, *args: str):
        self.proc = project.popen("inference.py", "--serve", "--port", "0", "inference_device=cpu", *args)
        deadline, line = time.monotonic() + 180, ""
        while time.monotonic() < deadline and "serving run" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1)
            if ready:
                line = self.proc.stdout.readline()
            if self.proc.poll() is not None:
                pytest.fail(f"the server exited {self.proc.returncode}: {self.proc.stderr.read()[-2000:]}")
        self.address = re.search(r"http://([\d.]+:\d+)", line)[1]
        self.run_id = re.search(r"serving run (\S+)", line)[1]

    def url(self, path: str) -> str:
        return f"http://{self.address}{path}"

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=120)
        return self.proc.returncode, err


def request(url: str, body=None, headers=None, method=None) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()
