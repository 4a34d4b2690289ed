#!/usr/bin/env bash
# Install everything bakery and its tests need on a Debian 12 / Ubuntu machine, as root:
#   - Python with venv, and the tests' own system packages: OpenSSH (the stand-in builder) and socat
#   - the project with its dev extra, in ./.venv (Debian's system Python refuses global pip
#     installs, PEP 668), and the AWS CLI in ./.venv-aws
#   - the local cloud's system packages (mmdebstrap, slirp4netns, nftables, systemd-container, ...):
#     `bakery local.install`, as a user who only ran `pip install` gets them (bakery/local/prereqs.py)
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends \
  ca-certificates git python3 python3-venv openssh-server openssh-client socat
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/bakery local.install
# The AWS CLI in a venv of its own (it pins its own botocore): the tests drive the local cloud with
# it, proving that any client gets the same machines, with no bakery code on the client side.
if [ ! -x .venv-aws/bin/aws ]; then "$PY" -m venv .venv-aws && .venv-aws/bin/python -m pip install -q awscli; fi
echo "bakery installed: .venv/bin/invoke --list"
