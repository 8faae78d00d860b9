"""Shared fixtures. One Ray instance serves the whole test session (Ray starts in ~5 s here)."""
from __future__ import annotations

import os
import secrets
import socket

import pytest

# The session's Ray runs as `miku serve` runs its own (deployments/local_ray.py): loopback only, token
# auth on. The token lives in this process's environment, so every Ray process, driver and subprocess
# of the session inherits it and nothing is written to ~/.ray.
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

FAKE_GPU_RESOURCES = {"gtx1660": 1, "rx6800": 1}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


METRICS_PORT = free_port()


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray with the two fake GPU resources, shared by every Ray test in the session."""
    import ray

    if not ray.is_initialized():
        from deployments.app import PROXY_ENV

        for key, value in PROXY_ENV.items():  # the proxy transport the graph ships with, so tests exercise it
            os.environ.setdefault(key, value)
        from deployments.local_ray import start_local_ray

        start_local_ray(  # address="local": never attach to a cluster someone started with `ray start`
            num_cpus=2,
            resources=dict(FAKE_GPU_RESOURCES),
            include_dashboard=False,
            namespace="miku-tests",
            _metrics_export_port=METRICS_PORT,
            log_to_driver=False,
        )
    yield ray
    try:
        from ray import serve

        serve.shutdown()
    except Exception:
        pass
    ray.shutdown()


GRAPH_TOKEN = "test-token-0123456789"
# The admin panel's test users (tests/test_admin_panel.py): "lockme" exists to be locked out.
ADMIN_USER = "admin"
ADMIN_PASSWORD = "panel-password-0123"
ADMIN_LOCKOUT_USER = "lockme"
ADMIN_MAX_FAILURES = 3


def admin_test_config(state_dir) -> dict:
    """The graph_server's `admin:` section: cheap argon2 parameters (the hash carries them), tmp state."""
    from argon2 import PasswordHasher

    from graph.admin.passwords import hash_password

    hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
    return {
        "users": {ADMIN_USER: hash_password(ADMIN_PASSWORD, hasher), ADMIN_LOCKOUT_USER: hash_password(ADMIN_PASSWORD, hasher)},
        "users_file": str(state_dir / "admin-users"),
        "secret_file": str(state_dir / "admin-secret"),
        "lockout": {"max_failures": ADMIN_MAX_FAILURES, "window_s": 600, "lockout_s": 600},
        "overview_interval_s": 0.5,
    }
# The graph_server's session lease: short so a vanished client's session ends soon, long enough that a
# heartbeat through Serve on a loaded machine (seconds, at times) never lets a live session expire.
GRAPH_LEASE_S = 12


@pytest.fixture(scope="session")
def llm_server():
    """A real OpenAI-compatible SSE server on 127.0.0.1 (tests/support/llm_server.py)."""
    from tests.support.llm_server import LLMTestServer

    server = LLMTestServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def serve_http_port(ray_cluster) -> int:
    """Serve's HTTP proxy on a free loopback port, started once for the session."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


class GraphServer:
    def __init__(self, port: int, token: str, handle, llm_server):
        self.port = port
        self.token = token
        self.handle = handle
        self.llm_server = llm_server
        self.base_url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"

    @property
    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class MediaServers:
    """The drawing and vision backends of the session's graph: protocol servers (tests/support/image_servers.py)."""

    def __init__(self):
        from tests.support.image_servers import A1111ProtocolServer, MediaHostServer, OpenAIVisionProtocolServer

        self.a1111 = A1111ProtocolServer().start()
        self.vision = OpenAIVisionProtocolServer().start()
        self.media_host = MediaHostServer().start()

    def stop(self):
        for server in (self.a1111, self.vision, self.media_host):
            server.stop()


@pytest.fixture(scope="session")
def media_servers():
    servers = MediaServers()
    yield servers
    servers.stop()


@pytest.fixture(scope="session")
def graph_server(ray_cluster, serve_http_port, llm_server, media_servers, tmp_path_factory):
    """The whole graph from configs/local.yaml, deployed once per session as app 'miku' at '/'.

    The LLM stage talks to the session's real SSE test server, drawing and vision to protocol servers
    (`media_servers`); everything else is the embedded default.
    """
    from deployments.app import CONFIG_DIR, deploy_config

    handle = deploy_config(
        CONFIG_DIR / "local.yaml",
        app_name="miku",
        route_prefix="/",
        overrides={
            "llm": {"backend": "openai", "url": llm_server.url, "model": "miku-test"},
            "voice": {"token": GRAPH_TOKEN, "stage_timeout_s": 20, "session_prompt_timeout_s": 30},
            # a short lease so tests of vanished clients finish quickly; state in a fresh directory
            "controller": {"state_dir": str(tmp_path_factory.mktemp("controller")), "lease_s": GRAPH_LEASE_S},
            "brain": {"memory_path": str(tmp_path_factory.mktemp("brain") / "memory.sqlite3")},
            "image": {"backend": "a1111", "url": media_servers.a1111.url, "progress_interval_s": 0.1},
            "vision": {"backend": "openai-vision", "url": media_servers.vision.url, "model": "vision",
                       "unload_path": "/unload",
                       "fetch": {"allowed_hosts": ["127.0.0.1"], "allow_internal": True, "allow_http": True}},
            "admin": admin_test_config(tmp_path_factory.mktemp("admin")),
        },
    )
    yield GraphServer(serve_http_port, GRAPH_TOKEN, handle, llm_server)
