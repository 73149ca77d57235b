#!/bin/sh
# Installs what the test suite needs on a fresh Debian/Ubuntu machine: the real
# registry, clients, container runtime and S3 server the end-to-end tests drive, and the
# npm dependencies. Safe to run again.
set -eu
cd "$(dirname "$0")/.."
need=""
command -v docker-registry >/dev/null 2>&1 || need="$need docker-registry"
command -v skopeo >/dev/null 2>&1 || need="$need skopeo"
command -v containerd >/dev/null 2>&1 || need="$need containerd"
# openssl: the test CA and certificates of the registry-shapes test.
command -v openssl >/dev/null 2>&1 || need="$need openssl"
# Ceph RGW: the real S3 server the S3 store tests run against (test/harness/rgw.ts).
command -v radosgw >/dev/null 2>&1 || need="$need radosgw ceph-mon ceph-osd"
# Chromium: the headless browser the admin page's tests drive (through playwright-core).
[ -x /usr/bin/chromium ] || need="$need chromium"
if [ -n "$need" ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing Debian packages:$need"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need >/dev/null
fi
npm ci --no-audit --no-fund
# Deno, for the end-to-end pulls on Deno (fetched once into npm's cache).
npx -y deno@2.9.6 --version >/dev/null
