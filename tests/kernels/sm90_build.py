"""Runs benchmarks/compile_sm90.py for the sm_90 build tests: in a child process, since this test process has
TRITON_INTERPRET=1 (tests/conftest.py), under which Triton makes interpreted functions, which do not compile."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def compile_sm90(names: list[str], timeout: int = 400) -> str:
    """Build the named kernels for sm_90 with Triton's own ptxas; returns the script's report (asserts it ran)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-m", "benchmarks.compile_sm90", *names], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout
