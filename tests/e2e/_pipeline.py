"""Helpers for the end-to-end tests: start a real ferry, wait for it, ask it things."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV_BIN = os.path.dirname(sys.executable)
MODEL = "SmolLM2-135M-Instruct"
STARTUP_TIMEOUT = 240  # a cold CI machine converts the GGUF tokenizer and dequantizes weights


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(**extra) -> dict:
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def ferry_command() -> list[str]:
    """The `ferry` console script when installed, else the same entry point through python -m."""
    exe = shutil.which("ferry", path=VENV_BIN)
    return [exe] if exe else [sys.executable, "-m", "services.cli"]


class Server:
    def __init__(self, argv: list[str], port: int, log_path: str, env: dict | None = None):
        self.port, self.log_path = port, log_path
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, cwd=REPO, env=env or base_env(), stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout: float = STARTUP_TIMEOUT):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.logs()[-4000:]}")
            if get(self.url + "/health")[0] == 200:
                return self
            time.sleep(0.5)
        raise TimeoutError(f"server not healthy after {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        self.log.flush()
        with open(self.log_path, "rb") as fh:
            return fh.read().decode(errors="replace")

    def stop(self, timeout: float = 30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@contextlib.contextmanager
def serving(tmp, *flags: str):
    """`ferry serve` of the default model with these flags, its run dir and log under tmp: healthy, then stopped."""
    port = free_port()
    s = Server(ferry_command() + ["serve", "--port", str(port), "--run-dir", str(tmp / "run"), *flags], port,
               str(tmp / "ferry.log"))
    try:
        yield s.wait_ready()
    finally:
        s.stop()


def get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError:
        return 0, ""


def post(url: str, body: bytes | dict, timeout: float = 60.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def metric(text: str, name: str, labels: str = "") -> float | None:
    """The value of name{labels}; with no labels given, of the first series of that name (whatever its labels:
    the vLLM-shaped series carry model_name)."""
    key = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(key + " ") or (not labels and line.startswith(name + "{")):
            return float(line.split()[-1])
    return None


def child_pids(log_text: str) -> dict[str, int]:
    """name -> pid from the launcher's 'started NAME (pid N)' lines."""
    out = {}
    for line in log_text.splitlines():
        if "started " in line and "(pid " in line:
            name = line.split("started ", 1)[1].split(" ", 1)[0]
            out[name] = int(line.rsplit("(pid ", 1)[1].rstrip(")"))
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead too
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
