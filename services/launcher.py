"""`ferry serve`: start every process for development, stop them all on Ctrl-C or SIGTERM (the gateway
first: it drains what is in flight, up to shutdown_timeout, while the rest still runs).

A child that dies is reported, not restarted: the others notice it (heartbeats) and the gateway
answers 503, which is what a developer wants to see. supervisord restarts processes in production.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from engine.memory_plan import kv_cache_dtype
from engine.model_config import resolve_model_path
from shared.errors import FerryError
from shared.hub_names import is_hub_id
from shared.logs import setup_logging
from shared.model_groups import model_groups
from shared.security import UnsafePath
from shared.settings import load_settings
from shared.sockets import configure

PR_SET_PDEATHSIG = 1


def _die_with_parent():
    """In the child: get SIGTERM when the launcher dies, even by SIGKILL (Linux only)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def plan_processes(settings, argv: list[str], run_dir: str,
                   environ=os.environ) -> list[tuple[str, list[str], dict[str, str]]]:
    """(name, command, environment) for every process, in start order: runners load weights the longest.
    Several models (shared/model_groups.py): each group's processes, named MODEL/runner.0 ..., with
    --model-group I; then the one gateway, which serves them all."""
    py = [sys.executable, "-m"]
    common = [*argv, "--run-dir", run_dir]
    several = bool(settings.models or settings.models_file)
    procs = []
    for group in model_groups(dataclasses.replace(settings, run_dir=run_dir)):
        gs, tag = group.settings, f"{group.name}/" if several else ""
        mine = [*common, "--model-group", str(group.index)] if several else common
        env = group_env(gs, environ, group.index, group.gpus)
        procs += [(f"{tag}runner.{r}", py + ["services.runner", *mine, "--rank", str(r)], env)
                  for r in range(gs.tensor_parallel_size)]
        procs.append((f"{tag}scheduler", py + ["services.scheduler", *mine], env))
        procs.append((f"{tag}detokenizer", py + ["services.detokenizer", *mine], env))
        procs += [(f"{tag}tokenizer.{i}", py + ["services.tokenizer", *mine, "--tokenizer-id", str(i)], env)
                  for i in range(gs.num_tokenizers)]
    procs.append(("gateway", py + ["services.gateway", *common], dict(environ)))
    return procs


def group_env(settings, environ=os.environ, index: int = 0, gpus: str = "") -> dict[str, str]:
    """A model group's environment: its GPUs (CUDA_VISIBLE_DEVICES) and, with several runner ranks, one
    rendezvous address for the group.

    A MASTER_PORT given by the user is kept (plus the group's index, with several models); otherwise a free
    port, so that two servers on one host (or two test runs, or two groups) never join each other's group."""
    env = dict(environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus
    if settings.tensor_parallel_size > 1:
        env.setdefault("MASTER_ADDR", "127.0.0.1")
        if "MASTER_PORT" in environ:
            env["MASTER_PORT"] = str(int(environ["MASTER_PORT"]) + index)
        else:
            with socket.socket() as s:
                s.bind((env["MASTER_ADDR"], 0))
                env["MASTER_PORT"] = str(s.getsockname()[1])
    return env


def fetch_hub_models(settings, log: logging.Logger) -> bool:
    """Models given as org/name: found in a local cache or downloaded once, here, before any child starts (they
    then find them in the cache). False, after saying why, when one cannot be had."""
    for group in model_groups(settings):
        if is_hub_id(group.settings.model):
            try:
                log.info("%s: %s", group.settings.model, resolve_model_path(group.settings.model,
                                                                          group.settings.download))
            except FerryError as e:
                log.error("%s", e.message)
                return False
    return True


def serve(argv: list[str]) -> int:
    settings = load_settings(argv)  # fail on bad flags here, before starting anything
    log = setup_logging("launcher", settings.log_level, settings.log_format)
    try:  # issue 18: a KV cache dtype ferry does not have fails here, not later in each runner's log
        for group in model_groups(settings):
            kv_cache_dtype(group.settings)
    except ValueError as e:
        log.error("refusing to start: %s", e)
        return 2
    own_dir = not settings.run_dir
    run_dir = settings.run_dir or tempfile.mkdtemp(prefix="ferry-")
    own_keys = run_dir.startswith("tcp://") and not settings.curve_keys_dir
    if own_keys:  # one host: a fresh private key directory that every child reads the same key from
        settings.curve_keys_dir = tempfile.mkdtemp(prefix="ferry-keys-")
        argv = [*argv, "--curve-keys-dir", settings.curve_keys_dir]
    try:
        configure(dataclasses.replace(settings, run_dir=run_dir))  # refuse an unsafe directory before any child
    except (UnsafePath, OSError) as e:
        log.error("refusing to start: %s", e)
        return 2
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    children: dict[str, subprocess.Popen] = {}
    if not fetch_hub_models(settings, log):
        return 1
    for name, cmd, env in plan_processes(settings, argv, run_dir):
        if name.endswith("runner.1"):  # a group of several ranks
            log.info("%s: runner ranks meet at %s:%s", name, env["MASTER_ADDR"], env["MASTER_PORT"])
        children[name] = subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)
        log.info("started %s (pid %d)", name, children[name].pid)
    url = f"http://{settings.host}:{settings.port}/health"
    announced = False
    try:
        while not stopping:
            time.sleep(0.5)
            if stopping:  # Ctrl-C reaches the whole process group: children that exit now are stopping too
                break
            for name, p in list(children.items()):
                if p.poll() is not None:
                    log.error("%s exited with status %s; the others keep running", name, p.returncode)
                    del children[name]
            if not children:
                log.error("every process has exited")
                return 1
            if not announced and _healthy(url):
                announced = True
                names = ", ".join(repr(g.name) for g in model_groups(settings))
                log.info("ready: %s on http://%s:%d", names, settings.host, settings.port)
    finally:
        _stop_all(children, log, settings.shutdown_timeout)
        if own_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        if own_keys:
            shutil.rmtree(settings.curve_keys_dir, ignore_errors=True)
    return 0


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as r:
            return r.status == 200
    except Exception:
        return False


def _stop_all(children: dict[str, subprocess.Popen], log: logging.Logger, drain_timeout: float,
              grace: float = 10.0):
    """The gateways first, and wait while they drain: requests in flight finish (up to drain_timeout) through
    the processes behind them, which are stopped only then."""
    gateways = {name: p for name, p in children.items() if name.startswith("gateway")}
    _terminate(gateways, log, drain_timeout + grace)
    _terminate({name: p for name, p in children.items() if name not in gateways}, log, grace)


def _terminate(children: dict[str, subprocess.Popen], log: logging.Logger, grace: float):
    for p in children.values():
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for name, p in children.items():
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0fs; killing it", name, grace)
            p.kill()
            p.wait()
