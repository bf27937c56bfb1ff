#!/usr/bin/env bash
# Installs, as root on Debian 12, the system packages the tests, the demo and the benchmarks
# need. Idempotent: installs only what is missing, and does nothing when all is there.
set -euo pipefail

# command -> Debian package
declare -A need=(
  [ip]=iproute2
  [bridge]=iproute2
  [iptables]=iptables
  [ipset]=ipset
  [iperf3]=iperf3
  [tcpdump]=tcpdump
  [ping]=iputils-ping
  [ethtool]=ethtool
  [ps]=procps
  [sysctl]=procps
  [modprobe]=kmod
  [nc]=netcat-openbsd
  # the reference bridge/host-local/portmap CNI plugins, next to which weave-cni is measured
  [/usr/lib/cni/host-local]=containernetworking-plugins
  # the kubelet path of weave-cni (tests/cri): containerd's CRI plugin, runc, busybox for the offline images
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc
  [/bin/busybox]=busybox-static
  [nsenter]=util-linux
  # the OVS backend of fastdp (fastdp/ovs): its tests run private ovsdb-server/ovs-vswitchd
  # children in userspace (netdev) mode; they never use the packaged service
  [ovsdb-server]=openvswitch-switch
  [ovs-vswitchd]=openvswitch-switch
  [ovsdb-tool]=openvswitch-common
  [ovs-vsctl]=openvswitch-common
  # the VM lab (internal/vmlab, tests/vm): QEMU (TCG) boots Debian's kernel package, fetched
  # with apt-get download and unpacked with dpkg-deb; busybox-static (above) is the guest's userland
  [qemu-system-x86_64]=qemu-system-x86
  [xz]=xz-utils
  [depmod]=kmod
  [dpkg-deb]=dpkg
  [ldd]=libc-bin
)

missing=()
for cmd in "${!need[@]}"; do
  if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$cmd" ] && ! [ -x "/sbin/$cmd" ]; then
    missing+=("${need[$cmd]}")
  fi
done

# The VM lab downloads the kernel package linux-image-amd64 points to: apt must know it.
need_update=0
if ! apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1; then
  need_update=1
fi

if [ ${#missing[@]} -eq 0 ] && [ $need_update -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages ${missing[*]:-none}, apt lists $([ $need_update -eq 1 ] && echo stale || echo fine); run as root to install them" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "install-deps: installing ${pkgs[*]}"
# iperf3's package asks whether to start a daemon; answer no.
echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
