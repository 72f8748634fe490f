#!/bin/sh
# Builds a Debian 12 box for vagrant-libvirt from debootstrap, for machines that cannot
# download `debian/bookworm64` from Vagrant Cloud (only Debian's package archive is needed).
#
#   sudo vm-tests/vagrant/build-box.sh [OUT.box]     # default: o7s-bookworm.box
#   vagrant box add --name o7s/bookworm64 OUT.box
#   O7S_VAGRANT_BOX=o7s/bookworm64 vagrant up --provider=libvirt --no-provision
#
# What the box has: Debian 12 (linux-image-amd64, systemd, ifupdown + DHCP on the first NIC,
# which is the management NIC), openssh-server, sudo, rsync, iproute2, iputils-ping, procps,
# and a `vagrant` user (password `vagrant`) with passwordless sudo and Vagrant's well-known
# insecure public key (Vagrant replaces it with a key of its own on the first `vagrant up`).
# Interfaces are named eth0, eth1, ... (`net.ifnames=0`), as in debian/bookworm64. Boots with
# extlinux from an ext4 file system spanning the whole disk (a sparse qcow2 image).
#
# Needs root, debootstrap, qemu-utils (qemu-img), extlinux and loop devices. Environment:
# O7S_BOX_MIRROR (default http://deb.debian.org/debian), O7S_BOX_SIZE (disk size, default 8G), O7S_BOX_PUBKEY (the public key to authorize; default:
# Vagrant's insecure key from the installed vagrant package).
set -eu

# Mount in a private mount namespace: a mount that propagates into other namespaces stays
# mounted there after our umount, its journal is never checkpointed, and the first boot
# replays it over the boot sector (the box booted once, then "not a bootable disk").
if [ -z "${O7S_BOX_PRIVATE_MOUNTS:-}" ]; then
    O7S_BOX_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private "$0" "$@"
fi

out=$(realpath -m "${1:-o7s-bookworm.box}")
mirror=${O7S_BOX_MIRROR:-http://deb.debian.org/debian}
size=${O7S_BOX_SIZE:-8G}
pubkey=${O7S_BOX_PUBKEY:-}
if [ -z "$pubkey" ]; then
    for k in /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
             /opt/vagrant/embedded/gems/gems/vagrant-*/keys/vagrant.pub; do
        [ -f "$k" ] && pubkey=$k
    done
fi
die() { echo "build-box: $*" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || die "needs root (loop devices, mount, debootstrap)"
[ -n "$pubkey" ] && [ -f "$pubkey" ] || die "no vagrant.pub found: set O7S_BOX_PUBKEY"
for tool in debootstrap qemu-img extlinux losetup mkfs.ext4 blkid dumpe2fs unshare; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install debootstrap qemu-utils extlinux)"
done

work=$(mktemp -d /var/tmp/o7s-box.XXXXXX)
root=$work/root
loop=
cleanup() {
    for m in dev/pts dev proc sys; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
    done
    mountpoint -q "$root" 2>/dev/null && umount "$root"
    [ -n "$loop" ] && losetup -d "$loop"
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "build-box: disk $size, mirror $mirror"
truncate -s "$size" "$work/disk.raw"
# The whole disk is one ext4 file system (no partition table: loop devices need no partition
# scan); ext4 leaves its first 1024 bytes alone, so extlinux's boot sector is the disk's.
loop=$(losetup --find --show "$work/disk.raw")
part=$loop
# extlinux reads ext4 without the 64bit feature.
mkfs.ext4 -q -O ^64bit -L o7s-root "$part"
uuid=$(blkid -s UUID -o value "$part")
mkdir -p "$root"
mount "$part" "$root"

debootstrap --variant=minbase \
    --include=systemd-sysv,udev,kmod,linux-image-amd64,initramfs-tools,openssh-server,sudo,rsync,iproute2,iputils-ping,procps,ifupdown,isc-dhcp-client,netbase,ca-certificates,less \
    bookworm "$root" "$mirror"

cat >"$root/etc/fstab" <<EOF
UUID=$uuid / ext4 errors=remount-ro 0 1
EOF
echo o7s-box >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1 localhost
127.0.1.1 o7s-box
EOF
cat >"$root/etc/network/interfaces" <<'EOF'
source /etc/network/interfaces.d/*

auto lo
iface lo inet loopback

allow-hotplug eth0
iface eth0 inet dhcp
EOF
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
EOF
# sshd: no reverse DNS (a private network with no resolver would stall every login).
echo 'UseDNS no' >"$root/etc/ssh/sshd_config.d/o7s.conf"
chroot "$root" useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant:vagrant' | chroot "$root" chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' >"$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 0600 -o 1000 -g 1000 "$pubkey" "$root/home/vagrant/.ssh/authorized_keys"

kernel=$(cd "$root/boot" && ls vmlinuz-* | sort -V | tail -n 1)
initrd=initrd.img-${kernel#vmlinuz-}
[ -f "$root/boot/$initrd" ] || die "no initramfs for $kernel"
mkdir -p "$root/boot/extlinux"
cat >"$root/boot/extlinux/extlinux.conf" <<EOF
DEFAULT debian
TIMEOUT 1
LABEL debian
  LINUX /boot/$kernel
  INITRD /boot/$initrd
  APPEND root=UUID=$uuid ro console=tty0 console=ttyS0 net.ifnames=0 biosdevname=0 quiet
EOF
extlinux --install "$root/boot/extlinux"
chroot "$root" apt-get clean
rm -f "$root/etc/machine-id" "$root/var/lib/dbus/machine-id"
touch "$root/etc/machine-id"

umount "$root"
# Cleanly unmounted, or the first boot would replay the journal over the boot sector.
if dumpe2fs -h "$loop" 2>/dev/null | grep -q needs_recovery; then
    die "the file system was not cleanly unmounted (still mounted elsewhere?)"
fi
losetup -d "$loop"
loop=

qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
gib=$(( $(stat -c %s "$work/disk.raw") / 1073741824 ))
printf '{"provider":"libvirt","format":"qcow2","virtual_size":%s}\n' "$gib" >"$work/metadata.json"
cat >"$work/Vagrantfile" <<'EOF'
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |libvirt|
    libvirt.disk_bus = "virtio"
  end
end
EOF
tar -C "$work" -cf "$out" metadata.json Vagrantfile box.img
echo "build-box: wrote $out ($(du -h "$out" | cut -f1))"
