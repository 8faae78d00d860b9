"""Each deployment runs only on a node that has its GPU resource: a three-node Ray cluster on this machine
(head without GPUs, one node with `gtx1660`, one with `rx6800`), in its own process so it does not
disturb the session's Ray instance."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, os
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    import ray._private.services as services
    # keep every node and the driver on loopback (Ray would swap 127.0.0.1 for the host's address)
    services.get_node_ip_address = lambda address=None: "127.0.0.1"
    from ray import serve
    from ray.cluster_utils import Cluster
    from deployments.app import CONFIG_DIR, compose_app, deployment_options_of, load_serve_config

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "node_ip_address": "127.0.0.1"})
    nvidia = cluster.add_node(num_cpus=0, resources={"gtx1660": 1}, node_ip_address="127.0.0.1")
    amd = cluster.add_node(num_cpus=0, resources={"rx6800": 1}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address, log_to_driver=False, _node_ip_address="127.0.0.1")
    cluster.wait_for_nodes()
    options = deployment_options_of(load_serve_config(CONFIG_DIR / "local.yaml")["applications"][0])
    args = {"llm": {"backend": "echo"}, "tts": {"backend": "espeak"}, "vc": {"backend": "passthrough"},
            "voice": {"token": "t"}, "controller": {"state_dir": os.environ["STATE_DIR"]}}
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["PORT"])})
    handle = serve.run(compose_app(args, options), name="miku", route_prefix="/")
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{os.environ['PORT']}/healthz", headers={"Authorization": "Bearer t"})
    health = json.load(urllib.request.urlopen(request))  # the per-stage detail needs the token
    print("RESULT " + json.dumps({"nodes": {"nvidia": nvidia.node_id, "amd": amd.node_id}, "health": health}))
    serve.shutdown()
    ray.shutdown()
    cluster.shutdown()
    """
)


def test_each_stage_runs_on_the_node_with_its_gpu_resource(tmp_path):
    from tests.conftest import free_port

    env = {**os.environ, "PORT": str(free_port()), "STATE_DIR": str(tmp_path), "RAY_USAGE_STATS_ENABLED": "0"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"cluster run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    data = json.loads(lines[-1][len("RESULT "):])
    stages = data["health"]["stages"]
    assert stages["tts"]["node_id"] == data["nodes"]["nvidia"] and "gtx1660" in stages["tts"]["resources"]
    assert stages["llm"]["node_id"] == data["nodes"]["amd"] and "rx6800" in stages["llm"]["resources"]
    assert stages["vc"]["node_id"] == data["nodes"]["amd"] and "rx6800" in stages["vc"]["resources"]
