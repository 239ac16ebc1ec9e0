"""The vLLM peer's process handling, with fake "python" scripts standing in for vLLM's environment."""

import json
import sys
import time
from pathlib import Path

import httpx
import pytest

from polyverse.bench import vllm_server as vs
from polyverse.errors import ConfigError, PolyverseError

# answers /v1/models like vLLM; records its argv and environment; starts a child that ignores SIGTERM
# (like a worker that hangs on shutdown), so only the SIGKILL to the whole group ends it
FAKE_SERVER = """#!{python}
import json, os, signal, subprocess, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
args = sys.argv[1:]
opt = lambda name: args[args.index(name) + 1]
child = subprocess.Popen([sys.executable, "-c",
                          "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
with open({record!r}, "w") as f:
    json.dump({{"argv": args, "child": child.pid, "kv": os.environ.get("VLLM_CPU_KVCACHE_SPACE"),
               "bind": os.environ.get("VLLM_CPU_OMP_THREADS_BIND")}}, f)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({{"object": "list", "data": [{{"id": opt("--served-model-name")}}]}}).encode()
        self.send_response(200 if self.path == "/v1/models" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass

HTTPServer(("127.0.0.1", int(opt("--port"))), Handler).serve_forever()
"""


def script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    return d


def test_find_vllm_python(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(vs, "REPO_ROOT", tmp_path / "elsewhere")
    assert vs.find_vllm_python("/no/such/python") == Path("/no/such/python")
    assert vs.find_vllm_python(None) is None
    python = tmp_path / ".venv-vllm" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    assert vs.find_vllm_python(None) == Path.cwd() / ".venv-vllm" / "bin" / "python"


def test_missing_environment_or_model(tmp_path, model_dir):
    with pytest.raises(ConfigError, match="make vllm-env"):
        with vs.vllm_server(tmp_path / "nope" / "python", model_dir, "m"):
            pass
    with pytest.raises(ConfigError, match="config.json"):
        with vs.vllm_server(Path(sys.executable), tmp_path, "m"):
            pass


def test_early_exit_quotes_the_log(tmp_path, model_dir):
    fake = script(tmp_path / "python", "#!/bin/sh\necho 'ModuleNotFoundError: No module named vllm'\nexit 3\n")
    log = tmp_path / "server.log"
    with pytest.raises(PolyverseError) as info:
        with vs.vllm_server(fake, model_dir, "m", log=log, ready_timeout=30):
            pytest.fail("yielded although the server exited")
    assert "status 3" in str(info.value)
    assert "No module named vllm" in str(info.value)


def test_timeout_kills_the_server(tmp_path, model_dir):
    pid_file = tmp_path / "pid"
    fake = script(tmp_path / "python", f"#!/bin/sh\necho $$ > {pid_file}\necho loading weights\nexec sleep 300\n")
    t0 = time.monotonic()
    with pytest.raises(PolyverseError, match="did not come up within 1 s(.|\n)*loading weights"):
        with vs.vllm_server(fake, model_dir, "m", ready_timeout=1, grace=5):
            pass
    assert time.monotonic() - t0 < 10
    assert not alive(int(pid_file.read_text()))


def test_serves_then_stops_the_whole_group(tmp_path, model_dir):
    record = tmp_path / "record.json"
    fake = script(tmp_path / "python", FAKE_SERVER.format(python=sys.executable, record=str(record)))
    with vs.vllm_server(fake, model_dir, "smol", dtype="float32", max_seqs=7, kv_gib=3, omp_bind="0-1",
                        ready_timeout=30, grace=1) as (base, proc):
        assert proc.poll() is None
        assert base.startswith("http://127.0.0.1:")
        models = httpx.get(base + "/v1/models", timeout=5).json()
        assert [m["id"] for m in models["data"]] == ["smol"]
        rec = json.loads(record.read_text())
        assert alive(rec["child"])
    argv = rec["argv"]
    assert argv[:2] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--model") + 1] == str(model_dir)
    assert argv[argv.index("--port") + 1] == base.rsplit(":", 1)[1]
    assert argv[argv.index("--max-num-seqs") + 1] == "7"
    assert argv[argv.index("--dtype") + 1] == "float32"
    assert (rec["kv"], rec["bind"]) == ("3", "0-1")
    with pytest.raises(httpx.HTTPError):
        httpx.get(base + "/v1/models", timeout=2)
    deadline = time.monotonic() + 5  # the orphaned child is reaped by init, not by us
    while alive(rec["child"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(rec["child"])


def test_port_in_use(tmp_path, model_dir):
    record = tmp_path / "record.json"
    fake = script(tmp_path / "python", FAKE_SERVER.format(python=sys.executable, record=str(record)))
    with vs.vllm_server(fake, model_dir, "first", ready_timeout=30, grace=1) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        with pytest.raises(ConfigError, match="already in use"):
            with vs.vllm_server(fake, model_dir, "second", port=port):
                pass
