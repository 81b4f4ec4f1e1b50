#!/usr/bin/env bash
# Installs what building rdb needs from the system on a fresh Debian machine (run as root).
# rocksdb's bindgen needs libclang; the tests use iproute2 (network namespaces) and Prometheus
# (dashboard queries, alert rules); everything else comes from crates.io through cargo.
# Safe to run again: it installs only what is missing.
set -euo pipefail

need=()
if ! ldconfig -p 2>/dev/null | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then
  need+=(libclang-dev)
fi

command -v ip >/dev/null 2>&1 || need+=(iproute2)
# The dashboard and alert-rule tests run Debian's Prometheus (prometheus, promtool).
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The packaging test checks the systemd units with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# ... and that flake.nix parses, with nix-instantiate.
command -v nix-instantiate >/dev/null 2>&1 || need+=(nix-bin)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing ${need[*]}; run this script as root (or install them yourself)" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi
