#!/bin/sh
# Install what vnetlab needs on Debian 12 / Ubuntu 22.04 / 24.04 (as root, or through sudo).
# One script for `make lab`, CI and the Vagrant VM. Safe to run again: installs only what is missing.
# With --test (make test does this as root) also what the tests need beyond the lab itself.
set -eu

PACKAGES="strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins
libstrongswan-standard-plugins iproute2 iputils-ping iperf3 tcpdump nftables graphviz make python3 python3-venv python3-pip"
# tshark: Wireshark's dissectors, the tests' independent judge of the key tables and captures
TEST_PACKAGES="tshark"
if [ "${1:-}" = "--test" ]; then
    PACKAGES="$PACKAGES $TEST_PACKAGES"
fi

if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo "$0" "$@"
    fi
    echo "install.sh: needs root (or sudo) to install packages" >&2
    exit 3
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: needs apt-get (Debian 12, Ubuntu 22.04 or 24.04); install these yourself: $PACKAGES" >&2
    exit 3
fi

missing=""
for pkg in $PACKAGES; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done

if [ -n "$missing" ]; then
    echo "install.sh: installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing
else
    echo "install.sh: all system packages present"
fi
