#!/usr/bin/env bash
# Installs wrk (Debian's package), the native load generator `freshrec bench serve --connections N`
# drives the server with. Without it the benchmark falls back to an asyncio client in another
# process (and says so). Idempotent: nothing is done when wrk is there. apt needs root (sudo is
# used when not root).
#
#   bash scripts/wrk.sh          # then: freshrec bench serve --quick --connections 64
set -euo pipefail

if command -v wrk >/dev/null 2>&1; then
  echo "wrk.sh: wrk is installed ($(command -v wrk))"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "wrk.sh: no apt-get here: install wrk (https://github.com/wg/wrk) by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends wrk
echo "wrk.sh: installed $(command -v wrk)"
