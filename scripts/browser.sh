#!/usr/bin/env bash
# Installs what the browser test (tests/test_page_browser.py) needs from the system: Debian's
# chromium and chromium-driver. Selenium comes with the dev extra (`make setup`). Idempotent:
# nothing is done when both commands are there. apt needs root (sudo is used when not root).
#
#   bash scripts/browser.sh          # then: pytest tests/test_page_browser.py
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "browser.sh: chromium and chromedriver are installed"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser.sh: no apt-get here: install Chromium and its chromedriver by hand" >&2
  exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver
echo "browser.sh: installed $(chromium --version 2>/dev/null | head -1)"
