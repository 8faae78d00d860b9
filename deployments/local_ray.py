"""How the project starts a one-machine Ray: on loopback only, with Ray's token authentication on.

A Ray node runs code for whoever can talk to it (its job API, GCS, raylet and worker gRPC servers), so
the Ray that `miku serve`, `miku say` and the tests start is locked down two ways:

- Loopback. On Linux Ray replaces a node address of 127.0.0.1 with the machine's external address and
  binds its gRPC servers, the runtime-env agent, the metrics endpoints and (through
  `ray.util.get_node_ip_address()`) the stage links there. Ray's single-machine mode, the default on
  macOS and Windows and switched on here with `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, keeps the node
  address 127.0.0.1, so every Ray port and every port the project opens listens on loopback only.
- Token authentication (`RAY_AUTH_MODE=token`, Ray 2.60). Other users of the same machine can reach
  loopback, so every Ray gRPC call and every dashboard/job API request must carry the cluster token.
  Ray reads it from `RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`;
  this module writes that file (mode 0600 from creation, which Ray's own generator does not do) when
  neither is given, so `ray status`, `serve status` and the dashboard work from another terminal.

A multi-node cluster is started with `ray start` instead (docs/deploy.md: which ports to firewall, how
nodes get the token).
"""
from __future__ import annotations

import os
import secrets
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph.files import create_private_file

# read by every Ray process at import: the node address stays 127.0.0.1 (Ray's one-machine mode)
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
LOOPBACK = "127.0.0.1"
DEFAULT_TOKEN_PATH = Path("~/.ray/auth_token")


@dataclass(frozen=True)
class RayToken:
    """Where the Ray cluster token comes from: the RAY_AUTH_TOKEN variable, or a 0600 file."""

    value: str
    path: Path | None  # None when it came from the environment variable

    def describe(self) -> str:
        return "RAY_AUTH_TOKEN" if self.path is None else str(self.path)


def provision_ray_token(env: MutableMapping[str, str] = os.environ) -> RayToken:
    """Turn on Ray's token auth for this process and the Ray it starts, creating the token if missing."""
    env["RAY_AUTH_MODE"] = "token"
    if env.get("RAY_AUTH_TOKEN", "").strip():
        return RayToken(env["RAY_AUTH_TOKEN"].strip(), None)
    path = Path(env.get("RAY_AUTH_TOKEN_PATH") or DEFAULT_TOKEN_PATH).expanduser()
    # same format as `ray get-auth-token --generate` (256 bits, hex); an existing file is kept, tightened
    create_private_file(path, secrets.token_hex(32).encode())
    value = path.read_text().strip()
    if not value:
        raise RuntimeError(f"the Ray token file {path} is empty: delete it and start again, or set RAY_AUTH_TOKEN")
    return RayToken(value, path)


def keep_ray_on_loopback(env: MutableMapping[str, str] = os.environ) -> None:
    """Ray processes started from here (and this driver) use 127.0.0.1 as the node address."""
    env.update(LOOPBACK_ENV)
    import ray._private.ray_constants as ray_constants

    # this process imported Ray before the variable was set; the processes Ray spawns read it fresh
    ray_constants.ENABLE_RAY_CLUSTER = False


def _refresh_ray_auth_config() -> None:
    """Ray caches RAY_AUTH_MODE and the token when it is imported; make this process see the new ones."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def use_token_if_available(env: MutableMapping[str, str] = os.environ) -> bool:
    """Attaching to a cluster: turn token auth on when a token is configured and RAY_AUTH_MODE is not
    set (what Ray does for address="auto", without its warning). True when token auth is on."""
    if "RAY_AUTH_MODE" in env:
        return env["RAY_AUTH_MODE"].lower() == "token"
    from ray._raylet import AuthenticationTokenLoader

    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        return False
    env["RAY_AUTH_MODE"] = "token"
    _refresh_ray_auth_config()
    return True


def start_local_ray(**init_kwargs: Any) -> RayToken:
    """`ray.init()` a new one-machine Ray on loopback with token auth; returns the token's source.

    `init_kwargs` go to `ray.init` (resources, include_dashboard, namespace, ...)."""
    token = provision_ray_token()
    keep_ray_on_loopback()
    _refresh_ray_auth_config()
    import ray

    ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **init_kwargs)
    return token
