"""The inside: private run directories, socket file modes, frame size limits and CURVE on tcp."""
import os
import socket
import stat
import subprocess
import sys
import time

import pytest
import zmq

from shared import sockets
from shared.codec import encode
from shared.messages import AbortRequest
from shared.security import UnsafePath, curve_keys, private_dir
from shared.settings import Settings
from shared.sockets import PullSocket, PushSocket, configure

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def guard():
    """configure() sets process-wide socket options: put them back after the test."""
    saved = (sockets._Guard.max_frame_bytes, sockets._Guard.curve, sockets._Guard.keys_dir)
    yield
    sockets._Guard.max_frame_bytes, sockets._Guard.curve, sockets._Guard.keys_dir = saved


def unsafe_dirs(tmp_path) -> dict[str, str]:
    """One directory for each way a run directory can be unsafe."""
    other = tmp_path / "other"
    other.mkdir(mode=0o700)
    if os.getuid() == 0:
        os.chown(other, 65534, 65534)  # nobody's: as root (CI) we can make one
    else:
        other = "/"  # root's, and we are not root
    target = tmp_path / "target"
    target.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(target)
    plain = tmp_path / "file"
    plain.write_text("")
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o755)
    return {"another user's": str(other), "a symlink": str(link), "a file": str(plain), "mode 0755": str(wide)}


def test_run_dir_is_created_private(tmp_path):
    old = os.umask(0)
    try:
        path = private_dir(str(tmp_path / "a" / "run"))  # parents too
    finally:
        os.umask(old)
    st = os.lstat(path)
    assert stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.getuid()
    assert private_dir(path) == path  # ours already (another ferry process made it first): accepted


def test_unsafe_run_dirs_are_refused(tmp_path):
    dirs = unsafe_dirs(tmp_path)
    for what, path in dirs.items():
        with pytest.raises(UnsafePath):
            private_dir(path)
        with pytest.raises(UnsafePath):  # connecting into one is refused too, not only binding
            PushSocket(zmq.Context.instance(), f"ipc://{path}/scheduler")
    assert stat.S_IMODE(os.lstat(dirs["mode 0755"]).st_mode) == 0o755  # refused, never repaired
    assert not os.path.exists(os.path.join(dirs["a symlink"], "scheduler"))


def test_a_service_refuses_to_start_in_an_unsafe_run_dir(tmp_path):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    dirs = unsafe_dirs(tmp_path)
    for what, path in dirs.items():
        p = subprocess.run([sys.executable, "-m", "services.scheduler", "--run-dir", path], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode != 0, what
        assert "refusing to start" in p.stderr and path in p.stderr, (what, p.stderr[-2000:])
    p = subprocess.run([sys.executable, "-m", "services.cli", "serve", "--run-dir", dirs["mode 0755"]], env=env,
                       cwd=REPO, capture_output=True, text=True, timeout=60)  # ferry serve starts no child then
    assert p.returncode != 0 and "refusing to start" in p.stdout + p.stderr and "started" not in p.stdout + p.stderr


def test_ipc_socket_files_are_private(tmp_path):
    run = private_dir(str(tmp_path / "run"))
    pull = PullSocket(zmq.Context.instance(), f"ipc://{run}/in")
    assert stat.S_IMODE(os.stat(f"{run}/in").st_mode) == 0o600
    pull.close()


def test_a_frame_over_max_frame_bytes_is_never_delivered(tmp_path, guard):
    ctx = zmq.Context.instance()
    configure(Settings(run_dir=str(tmp_path / "run"), max_frame_bytes=4096))
    addr = f"ipc://{tmp_path}/run/in"
    pull = PullSocket(ctx, addr, expect=AbortRequest)
    big = ctx.socket(zmq.PUSH)
    big.connect(addr)
    big.send(encode(AbortRequest("x" * 10_000)))  # the receiver disconnects this peer instead of buffering it
    ok = PushSocket(ctx, addr)
    ok.send(AbortRequest("small"))
    assert pull.recv(timeout=2.0) == AbortRequest("small")
    assert pull.recv(timeout=0.2) is None
    big.close(0)
    ok.close()
    pull.close()


def free_base() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_tcp_needs_the_keys_and_rejects_unauthenticated_peers(tmp_path, guard):
    assert zmq.has("curve")
    with pytest.raises(UnsafePath):
        configure(Settings(run_dir="tcp://127.0.0.1:6000"))  # no --curve-keys-dir: refused
    keys = str(tmp_path / "keys")
    base = free_base()
    configure(Settings(run_dir=f"tcp://127.0.0.1:{base}", curve_keys_dir=keys))
    assert curve_keys(keys) == sockets._Guard.curve  # made once, read again
    assert stat.S_IMODE(os.stat(f"{keys}/curve.key").st_mode) == 0o600
    ctx = zmq.Context.instance()
    addr = f"tcp://127.0.0.1:{base}"
    pull = PullSocket(ctx, addr, expect=AbortRequest)
    raw = ctx.socket(zmq.PUSH)  # no key at all: plain ZeroMQ
    raw.setsockopt(zmq.LINGER, 0)
    raw.connect(addr)
    wrong = ctx.socket(zmq.PUSH)  # CURVE, but guessing the server's key
    wrong.setsockopt(zmq.LINGER, 0)
    wrong.curve_serverkey = zmq.curve_keypair()[0]
    wrong.curve_publickey, wrong.curve_secretkey = zmq.curve_keypair()
    wrong.connect(addr)
    for s in (raw, wrong):
        s.send(encode(AbortRequest("forged")))  # a valid message
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert pull.recv(timeout=0.1) is None  # never acted on
    good = PushSocket(ctx, addr)  # a ferry socket holding the cluster key
    good.send(AbortRequest("real"))
    assert pull.recv(timeout=3.0) == AbortRequest("real")
    assert pull.recv(timeout=0.2) is None
    raw.close(0)
    wrong.close(0)
    good.close()
    pull.close()
