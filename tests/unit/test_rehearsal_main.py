"""``python -m servenest.rehearsal``: the cloud emulator on its own, for workers and tools."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import urllib.request

from servenest.process import live_sigint


def test_the_standalone_emulator_serves_the_cloud_apis_until_interrupted():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "servenest.rehearsal", "--port", str(port),
                             "--cluster", "c-standalone"], stdout=subprocess.PIPE, text=True,
                            preexec_fn=live_sigint)
    try:
        assert proc.stdout.readline().strip() == f"cloud emulator listening on http://127.0.0.1:{port}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        # CS is ROA style: the pre-created cluster answers at its REST path.
        with opener.open(f"http://127.0.0.1:{port}/clusters/c-standalone", timeout=5) as resp:
            assert json.loads(resp.read())["cluster_id"] == "c-standalone"
        with opener.open(f"http://127.0.0.1:{port}/__emulator/calls", timeout=5) as resp:
            assert json.loads(resp.read())["count"] == 1
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
