"""The graph stays off the network (issue 18.8) and a newcomer's first run ends cleanly (18.19).

`miku serve` and `miku say` run as real subprocesses, each starting its own Ray the way a user's first run
does; the checks come from outside, as another local user would try: which addresses the process tree
listens on, and whether Ray's job API and gRPC servers do anything for a caller without the token.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import psutil
import pytest
import yaml

from deployments.app import CONFIG_DIR, load_serve_config
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}
ASGI_METHOD = "/ray.serve.ASGIService/HandleRequest"  # Serve's proxy -> replica gRPC service
ALARMING = re.compile(r"failed|Traceback|killed by", re.IGNORECASE)


def private_config(tmp_path: Path) -> tuple[Path, int]:
    """configs/local.yaml with a free proxy port and every state file under tmp_path."""
    config = load_serve_config(CONFIG_DIR / "local.yaml")
    port = free_port()
    config["http_options"]["port"] = port
    args = config["applications"][0]["args"]
    args["voice"]["token_file"] = str(tmp_path / "graph-token")
    args["controller"] = {"state_dir": str(tmp_path / "controller")}
    args["brain"] = {"memory_path": str(tmp_path / "brain.sqlite3")}
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


@pytest.fixture
def cli_env():
    """The CLI's environment: a fresh Ray of its own, as on a newcomer's machine. RAY_TMPDIR hides any
    `ray start` cluster of this machine (the CLI would attach to it) and keeps the sessions apart."""
    ray_tmp = tempfile.mkdtemp(prefix="mr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    yield env
    shutil.rmtree(ray_tmp, ignore_errors=True)


class LineReader:
    """Reads a subprocess's merged output on a thread; `wait_for` blocks until a line matches."""

    def __init__(self, process: subprocess.Popen):
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, args=(process,), daemon=True).start()

    def _pump(self, process):
        for line in process.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, pattern: str, timeout: float = 300) -> re.Match:
        while True:
            line = self.lines.get(timeout=timeout)
            assert line is not None, f"the process ended before printing {pattern!r}:\n" + "".join(self.seen)[-4000:]
            self.seen.append(line)
            match = re.search(pattern, line)
            if match:
                return match


def listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket in the process tree."""
    root = psutil.Process(root_pid)
    found = []
    for process in [root, *root.children(recursive=True)]:
        try:
            name = " ".join(process.cmdline()[:1]) or process.name()
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN:
                    found.append((name, connection.laddr.ip, connection.laddr.port))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def http_status(url: str, headers: dict | None = None, data: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def grpc_status(address: str, method: str, token: str | None) -> grpc.StatusCode:
    """Call a Ray gRPC method with an empty request, as a plain client; the status it ends with."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
        try:
            call(b"", timeout=30, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as error:
            return error.code()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the CLI stops the graph and its Ray
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def test_miku_serve_listens_on_loopback_only_and_ray_refuses_callers_without_its_token(tmp_path, cli_env):
    config, proxy_port = private_config(tmp_path)
    token = os.environ["RAY_AUTH_TOKEN"]  # the session's (tests/conftest.py), inherited like a user's
    process = subprocess.Popen(
        [sys.executable, "-m", "deployments.cli", "--config", str(config), "serve"], cwd=tmp_path, env=cli_env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output = LineReader(process)
        ray_line = output.wait_for(r"Ray listens on 127\.0\.0\.1 only \(GCS (\S+), dashboard (http://\S+?)\)")
        gcs, dashboard = ray_line.group(1), ray_line.group(2)
        output.wait_for(r"Serving on http://127\.0\.0\.1:\d+")

        # every port the tree opened: Ray's GCS, raylet, agents, workers, metrics, dashboard, and the
        # project's Serve proxy, stage links and direct voice port
        sockets = listening_sockets(process.pid)
        exposed = [entry for entry in sockets if entry[1] not in LOOPBACK]
        # the one exception: Serve binds each replica's inter-deployment gRPC server to [::] (hard-coded
        # in Ray 2.60); Ray's token interceptor guards it, so each one must refuse a caller without it
        assert all("ServeReplica" in name for name, _, _ in exposed), f"listening beyond loopback: {exposed}"
        for _, _, port in exposed:
            assert grpc_status(f"127.0.0.1:{port}", ASGI_METHOD, None) == grpc.StatusCode.UNAUTHENTICATED, port
            assert grpc_status(f"127.0.0.1:{port}", ASGI_METHOD, token) != grpc.StatusCode.UNAUTHENTICATED, port
        ports = {port for _, _, port in sockets}
        assert proxy_port in ports
        replicas = {name for name, _, _ in sockets if "ServeReplica" in name}
        assert {"ray::ServeReplica:miku:SopranoTTS", "ray::ServeReplica:miku:VoiceGraph"} <= replicas

        # the job API (which runs any command) refuses without the token and with a wrong one
        marker = tmp_path / "job-ran"
        job = json.dumps({"entrypoint": f"touch {marker}"}).encode()
        assert http_status(f"{dashboard}/api/jobs/", {"Content-Type": "application/json"}, job) == 401
        assert http_status(f"{dashboard}/api/jobs/") == 401
        assert http_status(f"{dashboard}/api/jobs/", {"Authorization": "Bearer wrong"}) == 403
        assert http_status(f"{dashboard}/api/jobs/", {"Authorization": f"Bearer {token}"}) == 200
        assert not marker.exists()

        # Ray's gRPC servers: the GCS and the raylet answer only a caller with the token
        assert grpc_status(gcs, "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", None) == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_status(gcs, "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", "wrong") == grpc.StatusCode.UNAUTHENTICATED
        assert grpc_status(gcs, "/ray.rpc.NodeInfoGcsService/GetAllNodeInfo", token) == grpc.StatusCode.OK
        raylet_ports = sorted(port for name, _, port in sockets if name.endswith("/raylet"))
        assert raylet_ports
        statuses = {grpc_status(f"127.0.0.1:{port}", "/ray.rpc.NodeManagerService/GetNodeStats", None)
                    for port in raylet_ports}
        assert grpc.StatusCode.UNAUTHENTICATED in statuses and grpc.StatusCode.OK not in statuses
    finally:
        stop(process)


def test_miku_say_ends_cleanly_without_alarming_shutdown_lines(tmp_path, cli_env):
    config, _ = private_config(tmp_path)
    out = tmp_path / "hello.wav"
    result = subprocess.run(
        [sys.executable, "-m", "deployments.cli", "--config", str(config), "say", "Hello.", "--out", str(out)],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.stat().st_size > 44  # a WAV with audio in it
    alarming = [line for line in (result.stdout + result.stderr).splitlines() if ALARMING.search(line)]
    assert not alarming, "\n".join(alarming)
    assert "Stopping the graph and Ray" in result.stderr


def test_the_ray_token_file_is_created_0600_and_then_reused(tmp_path):
    from deployments.local_ray import provision_ray_token

    previous = os.umask(0o022)  # the usual umask, under which Ray's own generator writes 0644
    try:
        env = {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "ray" / "auth_token")}
        token = provision_ray_token(env)
        assert env["RAY_AUTH_MODE"] == "token" and token.path == tmp_path / "ray" / "auth_token"
        assert re.fullmatch(r"[0-9a-f]{64}", token.value)
        assert os.stat(token.path).st_mode & 0o777 == 0o600 and os.stat(tmp_path / "ray").st_mode & 0o777 == 0o700
        assert provision_ray_token(env).value == token.value  # a second start keeps the cluster's token
        from_env = provision_ray_token({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "unused")})
        assert from_env.value == "abc" and from_env.path is None and not (tmp_path / "unused").exists()
    finally:
        os.umask(previous)
