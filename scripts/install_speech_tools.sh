#!/usr/bin/env bash
# The speech engines the synthetic speech source needs (espeak-ng, flite; sox for hand conversions): installed with
# apt-get when this user can, else the command to run is printed. Tests that need them skip with that reason.
set -uo pipefail
if command -v espeak-ng >/dev/null && command -v flite >/dev/null; then
  exit 0
fi
packages="espeak-ng flite sox"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null && command -v apt-get >/dev/null; then
  sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $packages >/dev/null
else
  echo "speech data needs espeak-ng and flite: sudo apt-get install -y $packages"
fi
exit 0
