#!/usr/bin/env bash
# Start a one-machine Ray for `serve run configs/local.yaml` the way `miku serve` starts its own:
#   - every Ray port on 127.0.0.1 (Ray's single-machine mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0),
#   - token authentication on, the token in ~/.ray/auth_token created 0600 from the start,
#   - the two GPU stand-in resources the configs pin the stages to, and Serve's gRPC proxy transport.
# Then, in a shell with `export RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` (clients too
# must keep 127.0.0.1 as it is): serve run configs/local.yaml.  Stop it with: ray stop.
# Multi-node clusters: see docs/deploy.md (Security).
set -euo pipefail
RAY="${RAY:-$(dirname "$0")/../.venv/bin/ray}"
[ -x "$RAY" ] || RAY=ray
TOKEN_FILE="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
RESOURCES="${MIKU_RAY_RESOURCES:-{\"gtx1660\": 1, \"rx6800\": 1\}}"

if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$TOKEN_FILE" ]; then
    # umask 077: the file is owner-only from its creation (Ray's own generator leaves it 0644)
    ( umask 077; mkdir -p "$(dirname "$TOKEN_FILE")"; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$TOKEN_FILE" )
fi
[ -f "$TOKEN_FILE" ] && chmod 600 "$TOKEN_FILE"

# the proxy settings of deployments.app.PROXY_ENV (gRPC to the replicas; the header-line workaround)
export RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 RAY_SERVE_PROXY_USE_GRPC=1 WEBSOCKETS_MAX_LINE_LENGTH=1048576
"$RAY" start --head --num-gpus=0 --resources="$RESOURCES" --node-ip-address=127.0.0.1 \
    --dashboard-host=127.0.0.1 "$@"
cat <<EOF

Ray is up on 127.0.0.1 only, with token authentication (token: ${RAY_AUTH_TOKEN:+RAY_AUTH_TOKEN}${RAY_AUTH_TOKEN:-$TOKEN_FILE}).
Commands that talk to it (serve run, serve status, ray status) need in their shell:
    export RAY_AUTH_MODE=token RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
then:  serve run configs/local.yaml        (miku serve / miku say attach to it by themselves)
EOF
