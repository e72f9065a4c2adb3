"""Who may talk to ferry's sockets: private run directories (ipc) and CURVE keys (tcp).

ipc sockets are files: whoever can reach the run directory can send any message to any process (and
receive what a process sends, if it binds first). So the directory must be ours, a real directory (no
symlink), and closed to everyone else (mode 0700); one that fails a check is refused, never repaired,
since somebody else may already hold it. tcp sockets can be reached by anyone who can reach the port, so
they are CURVE-encrypted and a peer that does not hold the cluster's key cannot complete the handshake.
"""
from __future__ import annotations

import errno
import os
import stat

import zmq

CURVE_KEY_FILE = "curve.key"  # two z85 lines: the cluster's public key, then its secret key


class UnsafePath(RuntimeError):
    """A run or key directory that others own, can enter, or that is not a plain directory."""


def check_private_dir(path: str) -> None:
    """Raise UnsafePath unless path is a directory (not a symlink) owned by this user with mode 0700 or
    stricter."""
    st = os.lstat(path)  # never follow a symlink: its target is whatever its owner says
    if not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise UnsafePath(f"{path} is {kind}; ferry needs a private directory there")
    if st.st_uid != os.getuid():
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to this user (uid {os.getuid()}): "
                         f"whoever owns it could read and send this server's messages")
    if st.st_mode & 0o077:
        raise UnsafePath(f"{path} has mode {stat.S_IMODE(st.st_mode):04o}: other users may enter it "
                         f"(ferry needs 0700; remove it or chmod 700 it yourself)")


def private_dir(path: str) -> str:
    """Create path as a 0700 directory, or accept it if it already is one of ours; else raise UnsafePath."""
    try:
        os.mkdir(path, 0o700)  # the mode is masked by the umask: never wider than 0700
    except FileExistsError:
        pass  # someone (maybe another ferry process, maybe not) made it first: check what is there
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)  # parents: the leaf is what must be private
        return private_dir(path)
    check_private_dir(path)
    return path


def curve_keys(keys_dir: str) -> tuple[bytes, bytes]:
    """The cluster's CURVE key pair from keys_dir (a private directory), made there on first use. Processes
    racing to make it agree: the first file linked into place wins and everyone reads that one."""
    private_dir(keys_dir)
    path = os.path.join(keys_dir, CURVE_KEY_FILE)
    if not os.path.lexists(path):
        public, secret = zmq.curve_keypair()
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(public + b"\n" + secret + b"\n")
        try:
            os.link(tmp, path)
        except OSError as e:
            if e.errno != errno.EEXIST:
                raise
        finally:
            os.unlink(tmp)
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise UnsafePath(f"{path} must be a regular file of this user's with mode 0600")
    with open(path, "rb") as fh:
        lines = fh.read().split()
    if len(lines) != 2 or any(len(k) != 40 for k in lines):
        raise UnsafePath(f"{path} does not hold a CURVE key pair (two z85 lines of 40 characters)")
    return lines[0], lines[1]
