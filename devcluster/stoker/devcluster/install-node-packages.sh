#!/usr/bin/env bash
# Install what real nodes (`stoker cluster up --real-nodes N`) and the image builds need from
# Debian 12: containerd, runc, the CNI plugins, iptables, conntrack, and the image tools
# (mmdebstrap, umoci, buildah, busybox-static). Idempotent: installs only what is missing. Needs root
# and apt; starts no service (a policy-rc.d keeps Debian from starting containerd: the test bed
# starts its own containerd per node).
set -euo pipefail
pkgs=(containerd runc containernetworking-plugins iptables conntrack iproute2 util-linux
      mmdebstrap umoci buildah busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
  echo "install-node-packages.sh: run as root (missing: ${missing[*]})" >&2
  exit 1
fi
# Keep Debian's maintainer scripts from starting containerd on the host.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
fi
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -qq
apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}"
