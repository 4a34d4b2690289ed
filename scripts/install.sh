#!/usr/bin/env bash
# Install everything bakery needs on a Debian 12 / Ubuntu machine, as root:
#   - system packages: OpenSSH (the tests' stand-in builder), and the local cloud's
#     mmdebstrap, slirp4netns, zstd, iproute2 and util-linux (namespaces, overlayfs) and
#     nftables (security groups and network ACLs, inside the VPCs' own namespaces)
#   - the project with its dev extra, in ./.venv (Debian's system Python refuses
#     global pip installs, PEP 668), and the AWS CLI in ./.venv-aws
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  openssh-server openssh-client socat mmdebstrap slirp4netns zstd iproute2 util-linux tar nftables systemd-container \
  ca-certificates python3 python3-venv
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# The AWS CLI in a venv of its own (it pins its own botocore): the tests drive the local cloud with
# it, proving that any client gets the same machines, with no bakery code on the client side.
if [ ! -x .venv-aws/bin/aws ]; then "$PY" -m venv .venv-aws && .venv-aws/bin/python -m pip install -q awscli; fi
echo "bakery installed: .venv/bin/invoke --list"
