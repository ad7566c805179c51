# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""A tiny real Linux guest that writes numbered markers to its disk.

A snapshot is only point-in-time if it holds every guest write that
finished before some instant and none after it.  QEMU refuses writes
injected from its monitor while a virtio disk is attached, so the
writes come from a real guest: Debian's cloud kernel booting a busybox
initramfs whose /init writes marker k+1 only after marker k has
reached the disk.  A consistent copy therefore holds markers 1..K and
nothing else; a torn one has gaps.

Marker layout: marker k (k = 1, 2, ...) is the 4 KiB block at byte
offset MARKER_BASE + k * MARKER_SIZE of /dev/vda.  It starts with
b'SNAPMARK' and k as ten decimal digits, the rest is zeros.  The slot
at MARKER_BASE itself stays unused, and tests may keep their own data
below MARKER_BASE.  The guest stops at the end of the disk or at the
snapmarks= cap, whichever comes first, and prints "MARK k" on the
serial console after marker k is written.

A guest booted with a NIC (a virtio network card, as a tempest server
has) also comes up as a small cloud image, in the background so that
the markers never wait for it: busybox udhcpc configures eth0, the
user's public key comes from the metadata service (the EC2 path that
CirrOS reads too), and Debian's dropbear serves SSH as root.  "SNAPGUEST
SSH READY ip=<address>" on the serial console says it is up.  The kernel
command line flag snapdata=1 mounts the ext4 file system on the disk's
first partition (/dev/vda1, below MARKER_BASE) on /root, so that what a
test writes in root's home over SSH is in the disk and its snapshots.
A guest without a NIC or the flag boots exactly as before.

A guest given nova's guest agent channel (a virtio-serial port named
org.qemu.guest_agent.0, what nova adds for an image with
hw_qemu_guest_agent=yes) runs Debian's real QEMU guest agent on it, as a
cloud image with qemu-guest-agent installed does, so libvirt's
fsFreeze/fsThaw reach a real agent, which freezes a real file system:
an ext2 on a RAM disk mounted on FREEZABLE_MOUNT (the initramfs itself
cannot be frozen; the instance's disk is left alone).  Its fsfreeze hook
prints "SNAPGUEST FSFREEZE freeze" on the serial console just before each
freeze and "SNAPGUEST FSFREEZE thaw" just after each thaw.  The kernel
command line flag snapagent=0 leaves the port with nothing listening: a
guest whose agent does not answer.
"""

import glob
import hashlib
import json
import lzma
import os
import re
import shutil
import subprocess
import tempfile
import time
from xml.etree import ElementTree

MARKER_BASE = 32 * 1024 * 1024
MARKER_SIZE = 4096
MARKER_MAGIC = b'SNAPMARK'
READY = 'SNAPGUEST READY'
SSH_READY = 'SNAPGUEST SSH READY'
DEBIAN_PACKAGES = ('linux-image-cloud-amd64', 'busybox-static', 'cpio',
                   'dropbear-bin', 'qemu-guest-agent')
# insmod does not resolve dependencies, so this order matters.
MODULES = ('virtio_ring', 'virtio', 'virtio_pci_modern_dev',
           'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk')
# Loaded after MODULES, and only if the guest has a virtio NIC.
NET_MODULES = ('failover', 'net_failover', 'virtio_net')
# Loaded after MODULES, and only if the guest has a virtio-serial device:
# its ports, and RAM disks (brd) for a file system the agent can freeze.
AGENT_MODULES = ('virtio_console', 'brd')
BUSYBOX = '/bin/busybox'
# From Debian's dropbear-bin (never the 'dropbear' package: that one
# also installs and starts an SSH server on the host).  They go into the
# initramfs at these paths, with the shared libraries they load.
DROPBEAR = '/usr/sbin/dropbear'
DROPBEARKEY = '/usr/bin/dropbearkey'
# From Debian's qemu-guest-agent, with its libraries, at the same path.
QEMU_GA = '/usr/sbin/qemu-ga'
# The channel nova names, and qemu-ga's default path for it (udev's link).
AGENT_CHANNEL = 'org.qemu.guest_agent.0'
FSFREEZE_HOOK = '/etc/qemu/fsfreeze-hook'
# Where the guest mounts the file system its agent freezes (no file
# system of the initramfs or the kernel's own can be frozen).
FREEZABLE_MOUNT = '/mnt'
FSFREEZE = 'SNAPGUEST FSFREEZE'
AGENT_STARTED = 'SNAPGUEST AGENT STARTED'
# Where the libraries go: on the dynamic loader's default search path,
# so the guest needs no ld.so.cache.
LIBDIR = 'lib/x86_64-linux-gnu'
# The EC2-style metadata path: nova serves it, CirrOS reads it.
KEY_URL = ('http://169.254.169.254/2009-04-04/meta-data/public-keys/0/'
           'openssh-key')

INIT_SCRIPT = r"""#!/bin/busybox sh
# PID 1 of the snapshot test guest; see tests/testbed/guest.py.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

# load MODULE [PARAM=VALUE...]: insmod does not resolve dependencies, so
# the order of the calls matters.
load() {
    m=$1
    shift
    insmod /lib/modules/$m.ko "$@" || echo "SNAPGUEST insmod $m failed"
}

# Networking and SSH, as a cloud image has them: a DHCP lease, the
# user's public key from the metadata service, dropbear.  Only a guest
# with a NIC runs this, in the background: the markers never wait for it.
net_and_ssh() {
    mkdir -p /dev/pts /root/.ssh
    mount -t devpts devpts /dev/pts
    ip link set dev lo up
    # ed25519: generated in well under a second even under TCG (RSA is
    # slow there).  A new host key at every boot, as CirrOS does.
    /usr/bin/dropbearkey -t ed25519 \
        -f /etc/dropbear/dropbear_ed25519_host_key >/dev/null ||
        echo "SNAPGUEST SSH HOST KEY FAILED"
    # -O staticroutes asks for DHCP option 121, which carries the route
    # to the metadata service: dnsmasq sends it only when asked.
    # /etc/udhcpc/default.script applies the lease; -q: udhcpc exits once
    # it has one, no daemon stays.  Up to 5 rounds of 20 tries 1 s apart.
    n=0
    until udhcpc -i eth0 -s /etc/udhcpc/default.script -O staticroutes \
            -O mtu -t 20 -T 1 -n -q -f; do
        n=$((n + 1))
        if [ $n -ge 5 ]; then
            echo "SNAPGUEST NO DHCP LEASE"
            return 1
        fi
    done
    addr=$(ip -o -4 addr show dev eth0 |
           sed -n 's,.* inet \([0-9.]*\)/.*,\1,p')
    # The user's key, as cloud-init and CirrOS take it.  Retried: the
    # metadata proxy may answer a little after the lease is given.
    # timeout, not wget -T: Debian 12's static busybox wget segfaults
    # with -T.
    n=0
    until timeout 10 wget -q -O /run/key %(key_url)s 2>/dev/null &&
            [ -s /run/key ]; do
        n=$((n + 1))
        if [ $n -ge 60 ]; then
            echo "SNAPGUEST NO PUBLIC KEY"
            break
        fi
        sleep 1
    done
    # dropbear refuses keys in a directory or file others may write.
    chmod 700 /root/.ssh
    if [ -s /run/key ]; then
        # This server's key only; echo ends the line if the key did not.
        { cat /run/key; echo; } > /root/.ssh/authorized_keys
        chmod 600 /root/.ssh/authorized_keys
    fi
    # -s: keys only, no passwords; -E: log to the console.  dropbear
    # puts itself in the background.
    /usr/sbin/dropbear -s -E -p 22 -P /run/dropbear.pid \
        -r /etc/dropbear/dropbear_ed25519_host_key
    i=0
    until netstat -ltn | grep -q ':22 '; do
        i=$((i + 1))
        if [ $i -ge 100 ]; then
            echo "SNAPGUEST SSH FAILED"
            return 1
        fi
        sleep 0.1
    done
    echo "%(ssh_ready)s ip=$addr"
}

# Debian's qemu-guest-agent on nova's channel, as udev starts it on a
# cloud image: the port's /dev/virtio-ports link is udev's, made here.
# qemu-ga runs the fsfreeze hook before each freeze and after each thaw.
# It freezes every mounted file system on a block device: here a small
# ext2 on the first RAM disk, kept off the instance's disk.
start_agent() {
    i=0
    while [ ! -b /dev/ram0 ] && [ $i -lt 50 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    mkdir -p %(freezable)s
    mke2fs /dev/ram0 1024 >/dev/null &&
        mount -t ext2 /dev/ram0 %(freezable)s ||
        echo "SNAPGUEST NO FREEZABLE FS"
    port=
    i=0
    while [ -z "$port" ] && [ $i -lt 50 ]; do
        for p in /sys/class/virtio-ports/*; do
            [ "$(cat $p/name 2>/dev/null)" = %(agent_channel)s ] &&
                port=/dev/${p##*/}
        done
        [ -n "$port" ] || sleep 0.1
        i=$((i + 1))
    done
    if [ -z "$port" ]; then
        echo "SNAPGUEST NO AGENT PORT"
        return 1
    fi
    mkdir -p /dev/virtio-ports
    ln -sf $port /dev/virtio-ports/%(agent_channel)s
    /usr/sbin/qemu-ga --daemonize --method=virtio-serial \
        --path=/dev/virtio-ports/%(agent_channel)s --statedir=/run \
        --pidfile=/run/qemu-ga.pid --logfile=/dev/ttyS0 \
        --fsfreeze-hook=%(fsfreeze_hook)s ||
        { echo "SNAPGUEST AGENT FAILED"; return 1; }
    echo "%(agent_started)s port=$port"
}

for m in %(modules)s; do
    load $m
done
# A virtio NIC (virtio device id 1) gets its driver; a guest without one
# loads nothing more.  csum=0 gso=0: no checksum or segmentation offload,
# because the host end (Open vSwitch's userspace datapath) reads the tap
# through an AF_PACKET socket and drops partly checksummed or unsegmented
# frames.
if grep -qx 0x0001 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    load failover
    load net_failover
    load virtio_net csum=0 gso=0
fi
# A virtio-serial device (virtio device id 3) carries the agent's port.
if grep -qx 0x0003 /sys/bus/virtio/devices/*/device 2>/dev/null; then
    for m in %(agent_modules)s; do
        load $m
    done
fi
mode=idle
marks=100000
data=0
agent=1
for arg in $(cat /proc/cmdline); do
    case $arg in
        snapmode=*) mode=${arg#snapmode=} ;;
        snapmarks=*) marks=${arg#snapmarks=} ;;
        snapdata=*) data=${arg#snapdata=} ;;
        snapagent=*) agent=${arg#snapagent=} ;;
    esac
done
if [ -e /sys/class/virtio-ports ] && [ "$agent" != 0 ]; then
    start_agent
fi
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -b /dev/vda ] || echo "SNAPGUEST NO DISK"
if [ "$data" = 1 ]; then
    # snapdata=1: root's home is the ext4 file system on the disk's first
    # partition, which ends below the markers.
    i=0
    while [ ! -b /dev/vda1 ] && [ $i -lt 30 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    mount -t ext4 /dev/vda1 /root || echo "SNAPGUEST NO DATA FS"
fi
if [ -e /sys/class/net/eth0 ]; then
    net_and_ssh &
fi
base=$((%(base)d / %(size)d))
room=$(($(cat /sys/block/vda/size) * 512 / %(size)d - base - 1))
[ $room -lt $marks ] && marks=$room
echo "%(ready)s mode=$mode marks=$marks"
if [ "$mode" = markers ]; then
    k=1
    while [ $k -le $marks ]; do
        # conv=sync pads the header with zeros to one full block;
        # fsync makes dd return only once the block is on the disk.
        printf 'SNAPMARK%%010d' $k | dd of=/dev/vda bs=%(size)d count=1 \
            seek=$((base + k)) conv=sync,notrunc,fsync 2>/dev/null || {
            echo "SNAPGUEST WRITE FAILED $k"
            break
        }
        echo "MARK $k"
        k=$((k + 1))
    done
    echo "SNAPGUEST DONE $((k - 1))"
fi
while :; do
    sleep 3600
done
""" % {'modules': ' '.join(MODULES), 'base': MARKER_BASE,
       'size': MARKER_SIZE, 'ready': READY, 'ssh_ready': SSH_READY,
       'key_url': KEY_URL, 'agent_modules': ' '.join(AGENT_MODULES),
       'agent_channel': AGENT_CHANNEL, 'fsfreeze_hook': FSFREEZE_HOOK,
       'agent_started': AGENT_STARTED, 'freezable': FREEZABLE_MOUNT}

# qemu-ga runs this with "freeze" before it freezes the guest's file
# systems and with "thaw" after it thawed them; a failure fails the
# freeze.  Its output goes to /dev/null, so it writes to the console.
FSFREEZE_HOOK_SCRIPT = r"""#!/bin/sh
# qemu-ga's fsfreeze hook in the snapshot test guest (tests/testbed/guest.py).
echo "%s $1" > /dev/ttyS0
""" % FSFREEZE

# udhcpc runs this at each DHCP event ($1) with the lease in the
# environment: $interface, $ip, $mask (a prefix length), $router,
# $serverid, $mtu and $staticroutes (option 121: "net/len gateway" pairs).
UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc's event script in the snapshot test guest (tests/testbed/guest.py).
case $1 in
    deconfig)
        ip link set dev "$interface" up
        ip -4 addr flush dev "$interface"
        ;;
    bound|renew)
        ip -4 addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$mtu" ] && ip link set dev "$interface" mtu "$mtu"
        # Option 121 routes; a gateway 0.0.0.0 means on the link.  With
        # them the router option is ignored (RFC 3442): neutron lists
        # the default route among them.
        metadata=
        set -- $staticroutes
        while [ $# -ge 2 ]; do
            if [ "$2" = 0.0.0.0 ]; then
                ip route replace "$1" dev "$interface"
            else
                ip route replace "$1" via "$2" dev "$interface"
            fi
            [ "$1" = 169.254.169.254/32 ] && metadata=yes
            shift 2
        done
        if [ -z "$staticroutes" ] && [ -n "$router" ]; then
            set -- $router
            ip route replace default via "$1" dev "$interface"
        fi
        # No route to the metadata service in option 121: ask the DHCP
        # server, where neutron's isolated-network metadata proxy listens.
        if [ -z "$metadata" ] && [ -n "$serverid" ]; then
            ip route replace 169.254.169.254/32 via "$serverid" \
                dev "$interface"
        fi
        ;;
esac
exit 0
"""

# tempest runs its commands as "sudo ..."; the guest has only root.
SUDO_SCRIPT = r"""#!/bin/sh
# sudo in the snapshot test guest: everyone is root already.
exec "$@"
"""

# Debian's static busybox has no nohup applet, and tests start writers
# that must outlive their SSH session with it (CirrOS has one).
NOHUP_SCRIPT = r"""#!/bin/sh
# nohup in the snapshot test guest: the command ignores SIGHUP.
trap '' HUP
exec "$@"
"""

# What dropbear needs to know root: a password field that is neither
# empty nor locked ("!"), and a shell listed in /etc/shells.  glibc reads
# these files itself (nss_files is part of libc.so.6).
ETC_FILES = {
    'etc/passwd': 'root:x:0:0:root:/root:/bin/sh\n',
    'etc/group': 'root:x:0:\n',
    'etc/shells': '/bin/sh\n',
    'etc/nsswitch.conf': 'passwd: files\ngroup: files\nshadow: files\n',
}


def _missing(what):
    return RuntimeError('%s not found; install the Debian packages: '
                        'apt-get install %s'
                        % (what, ' '.join(DEBIAN_PACKAGES)))


def _find_kernel():
    """Return (version, vmlinuz) of the newest cloud kernel with modules.

    The cloud flavour has virtio as small modules and boots quickly under
    TCG; the host's own kernel may not be a Debian one at all.
    """
    found = []
    for path in glob.glob('/boot/vmlinuz-*-cloud-amd64'):
        version = os.path.basename(path)[len('vmlinuz-'):]
        if os.path.isdir(os.path.join('/lib/modules', version)):
            key = [int(n) for n in re.findall(r'\d+', version)]
            found.append((key, version, path))
    if not found:
        raise _missing('A cloud kernel (/boot/vmlinuz-*-cloud-amd64)')
    _key, version, path = max(found)
    return version, path


def _module_paths(version):
    """Map module name -> .ko or .ko.xz path, read from modules.dep."""
    moddir = os.path.join('/lib/modules', version)
    paths = {}
    with open(os.path.join(moddir, 'modules.dep')) as dep:
        for line in dep:
            rel = line.split(':', 1)[0]
            name = re.sub(r'\.ko(\.xz)?$', '', os.path.basename(rel))
            paths[name.replace('-', '_')] = os.path.join(moddir, rel)
    missing = [m for m in MODULES + NET_MODULES + AGENT_MODULES
               if m not in paths]
    if missing:
        raise RuntimeError('kernel %s lacks modules %s (want .ko or .ko.xz)'
                           % (version, ', '.join(missing)))
    return paths


def parse_ldd(output):
    """Return [(path in the initramfs, host path)] from ldd's output.

    Libraries go to LIBDIR under their soname; the dynamic loader, which
    ldd names by its absolute path (the binary's PT_INTERP), goes to that
    same path.  The vDSO is the kernel's and has no file.
    """
    found = []
    for line in output.splitlines():
        line = re.sub(r'\s*\(0x[0-9a-f]+\)$', '', line.strip())
        if not line:
            continue
        name, _, target = line.partition(' => ')
        if target == 'not found':
            raise RuntimeError('shared library %s not found' % name)
        if name.startswith('/'):
            found.append((name.lstrip('/'), target or name))
        elif target:
            found.append(('%s/%s' % (LIBDIR, name), target))
    return found


def _shared_libraries(binary):
    """Return [(path in the initramfs, host path)] of what binary loads."""
    out = subprocess.run(['ldd', binary], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    return parse_ldd(out)


def _read(path, opener=open):
    with opener(path, 'rb') as f:
        return f.read()


def initramfs_files(version):
    """Return {path: (mode, content)}: everything the initramfs holds.

    content is bytes for a file and None for a directory.  The cache key
    of build_boot_files is a hash of exactly this, so a changed script, a
    package upgrade or a new module makes a new initramfs.
    """
    for what, path in (('Static busybox', BUSYBOX),
                       ('Dropbear', DROPBEAR),
                       ('dropbearkey', DROPBEARKEY),
                       ('The QEMU guest agent', QEMU_GA)):
        if not os.path.exists(path):
            raise _missing('%s (%s)' % (what, path))
    files = {
        'init': (0o755, INIT_SCRIPT.encode()),
        'bin/busybox': (0o755, _read(BUSYBOX)),
        'bin/sudo': (0o755, SUDO_SCRIPT.encode()),
        'bin/nohup': (0o755, NOHUP_SCRIPT.encode()),
        'etc/udhcpc/default.script': (0o755, UDHCPC_SCRIPT.encode()),
        FSFREEZE_HOOK.lstrip('/'): (0o755, FSFREEZE_HOOK_SCRIPT.encode()),
        'root': (0o700, None),
        'tmp': (0o1777, None),
    }
    for sub in ('dev', 'proc', 'sys', 'run', 'etc/dropbear'):
        files[sub] = (0o755, None)
    for name, text in ETC_FILES.items():
        files[name] = (0o644, text.encode())
    modules = _module_paths(version)
    for name in MODULES + NET_MODULES + AGENT_MODULES:
        src = modules[name]
        opener = lzma.open if src.endswith('.xz') else open
        files['lib/modules/%s.ko' % name] = (0o644, _read(src, opener))
    # /init runs them as /usr/sbin/dropbear, /usr/bin/dropbearkey and
    # /usr/sbin/qemu-ga.
    for binary, path in ((DROPBEAR, 'usr/sbin/dropbear'),
                         (DROPBEARKEY, 'usr/bin/dropbearkey'),
                         (QEMU_GA, 'usr/sbin/qemu-ga')):
        files[path] = (0o755, _read(binary))
        for lib, host_path in _shared_libraries(binary):
            files[lib] = (0o755, _read(host_path))
    return files


def files_digest(files):
    """Return a short hash of initramfs_files()'s paths, modes and bytes."""
    h = hashlib.sha256()
    for path in sorted(files):
        mode, data = files[path]
        content = (b'directory' if data is None
                   else hashlib.sha256(data).hexdigest().encode())
        h.update(b'%s %o %s\n' % (path.encode(), mode, content))
    return h.hexdigest()[:12]


def build_boot_files(cache_dir):
    """Return (kernel_path, initrd_path) for the marker guest.

    The initramfs is built once per kernel version and content and kept
    in cache_dir, so later calls only read and hash its parts (a few MB)
    and stat a file.  It is not compressed: unpacking it at boot is then
    a copy, where gunzip would run emulated (TCG) at every boot.
    """
    version, kernel = _find_kernel()
    files = initramfs_files(version)
    initrd = os.path.join(cache_dir, 'snapguest-%s-%s.cpio'
                          % (version, files_digest(files)))
    if os.path.exists(initrd):
        return kernel, initrd
    if not shutil.which('cpio'):
        raise _missing('cpio')
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        root = os.path.join(tmp, 'root')
        for path, (mode, data) in files.items():
            full = os.path.join(root, path)
            if data is None:
                os.makedirs(full, exist_ok=True)
            else:
                os.makedirs(os.path.dirname(full), exist_ok=True)
                with open(full, 'wb') as f:
                    f.write(data)
        # Directories the files implied are 0755 whatever the umask.
        for d, dirs, _files in os.walk(root):
            for name in dirs:
                os.chmod(os.path.join(d, name), 0o755)
        for path, (mode, _data) in files.items():
            os.chmod(os.path.join(root, path), mode)
        names = sorted(os.path.relpath(os.path.join(d, n), root)
                       for d, dirs, fnames in os.walk(root)
                       for n in dirs + fnames)
        archive = subprocess.run(
            ['cpio', '--quiet', '-o', '-H', 'newc', '-R', '0:0'],
            cwd=root, input='\n'.join(names).encode(),
            stdout=subprocess.PIPE, check=True).stdout
        # Write then rename: concurrent test runs never see half a file.
        out = os.path.join(tmp, 'initrd')
        with open(out, 'wb') as f:
            f.write(archive)
        os.replace(out, initrd)
    return kernel, initrd


def domain_xml(uuid, name, disk_path, disk_format, kernel, initrd,
               serial_log, mode='idle', marks=100000, virt_type='qemu',
               memory_mib=256, emulator=None, channel=None, agent=True):
    """Return libvirt XML for the guest, shaped like a nova instance.

    TCG (virt_type 'qemu') is the default because nested KVM does not
    boot this guest dependably.  No network and no graphics: the serial
    log file is the only channel back to the test.  ``channel`` is the
    XML of a guest agent channel device (nova's), added as it is; with
    ``agent`` false, nothing in the guest listens on it.
    """
    E = ElementTree.SubElement
    dom = ElementTree.Element('domain', type=virt_type)
    E(dom, 'uuid').text = uuid
    E(dom, 'name').text = name
    E(dom, 'memory', unit='KiB').text = str(memory_mib * 1024)
    E(dom, 'vcpu').text = '1'
    os_ = E(dom, 'os')
    E(os_, 'type', arch='x86_64', machine='pc').text = 'hvm'
    E(os_, 'kernel').text = kernel
    E(os_, 'initrd').text = initrd
    E(os_, 'cmdline').text = ('console=ttyS0 snapmode=%s snapmarks=%d%s'
                              % (mode, marks,
                                 '' if agent else ' snapagent=0'))
    features = E(dom, 'features')
    E(features, 'acpi')
    E(features, 'apic')
    E(dom, 'clock', offset='utc')
    E(dom, 'on_poweroff').text = 'destroy'
    E(dom, 'on_reboot').text = 'restart'
    E(dom, 'on_crash').text = 'destroy'
    devices = E(dom, 'devices')
    if emulator:
        E(devices, 'emulator').text = emulator
    disk = E(devices, 'disk', type='file', device='disk')
    E(disk, 'driver', name='qemu', type=disk_format, cache='none')
    E(disk, 'source', file=disk_path)
    E(disk, 'target', dev='vda', bus='virtio')
    serial = E(devices, 'serial', type='file')
    E(serial, 'source', path=serial_log)
    E(serial, 'target', port='0')
    if channel:
        devices.append(ElementTree.fromstring(channel))
    E(devices, 'memballoon', model='none')
    return ElementTree.tostring(dom, encoding='unicode')


def _read_text(path):
    """Return the serial log with the tty's CRLF line ends made LF."""
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except FileNotFoundError:
        return ''
    return data.decode('utf-8', 'replace').replace('\r\n', '\n')


def wait_for_console(serial_log, text, timeout=120):
    """Wait until text shows up in the serial log; return the log.

    The log is the guest's only way to report, so on timeout its tail is
    the most useful thing to show.
    """
    deadline = time.monotonic() + timeout
    while True:
        log = _read_text(serial_log)
        if text in log:
            return log
        if time.monotonic() > deadline:
            raise TimeoutError('%r not in %s after %ss; log tail:\n%s'
                               % (text, serial_log, timeout, log[-3000:]))
        time.sleep(0.2)


def last_console_mark(serial_log):
    """Return the highest k for which the guest printed "MARK k".

    "MARK k" is printed after marker k was written, so a value read
    before a snapshot starts is a lower bound for what it must hold.
    """
    marks = re.findall(r'^MARK (\d+)$', _read_text(serial_log), re.M)
    return max(map(int, marks), default=0)


def fsfreeze_events(serial_log):
    """Return the guest agent's freezes and thaws so far, in order.

    A list of 'freeze' and 'thaw', one per line the fsfreeze hook
    printed: a freeze is printed before the agent freezes, a thaw after
    it thawed.
    """
    return re.findall(r'^%s (freeze|thaw)$' % FSFREEZE,
                      _read_text(serial_log), re.M)


def read_markers(image_path, fmt, count=None):
    """Return the sorted marker numbers found in an image file.

    Works on images in use (qemu-img -U) and on qcow2 overlays, since
    QEMU itself reads the guest's view of the disk.  Only the marker
    region is copied out, up to count markers if given.
    """
    info = json.loads(subprocess.run(
        ['qemu-img', 'info', '-U', '--output=json', '-f', fmt, image_path],
        stdout=subprocess.PIPE, check=True).stdout)
    size = info['virtual-size'] - MARKER_BASE
    if count is not None:
        size = min(size, (count + 1) * MARKER_SIZE)
    size -= size % MARKER_SIZE
    if size <= 0:
        return []
    opts = ('driver=raw,offset=%d,size=%d,file.driver=%s,'
            'file.file.driver=file,file.file.filename=%s'
            % (MARKER_BASE, size, fmt, image_path.replace(',', ',,')))
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, 'markers.raw')
        subprocess.run(['qemu-img', 'convert', '-U', '--image-opts', opts,
                        '-O', 'raw', out], check=True)
        with open(out, 'rb') as f:
            found = [_parse_marker(f, offset)
                     for offset in _data_blocks(f.fileno(), size)]
    return [n for n in found if n is not None]


def _data_blocks(fd, size):
    """Yield the offsets of marker slots that hold data.

    qemu-img writes zeros as holes, so skipping them keeps a scan of a
    large, mostly empty disk cheap.
    """
    offset = MARKER_SIZE
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError:  # ENXIO: no data after offset
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        start -= start % MARKER_SIZE
        yield from range(max(start, MARKER_SIZE), end, MARKER_SIZE)
        offset = max(end, start + MARKER_SIZE)


def _parse_marker(f, offset):
    """Return the marker number in the slot at offset, or None."""
    slot = offset // MARKER_SIZE
    f.seek(offset)
    head = f.read(len(MARKER_MAGIC) + 10)
    if not head.startswith(MARKER_MAGIC):
        return None
    number = int(head[len(MARKER_MAGIC):])
    if number != slot:
        raise AssertionError('marker slot %d holds marker %d'
                             % (slot, number))
    return number


def _ranges(numbers):
    out = []
    for n in numbers:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ', '.join(str(a) if a == b else '%d-%d' % (a, b) for a, b in out)


def check_consistent(markers):
    """Return K if markers are exactly 1..K; else raise AssertionError.

    A prefix is what a point-in-time copy of this guest's disk must hold;
    anything else means the copy mixed data from different moments.
    """
    markers = sorted(markers)
    if markers == list(range(1, len(markers) + 1)):
        return len(markers)
    missing = sorted(set(range(1, markers[-1] + 1)) - set(markers))
    raise AssertionError('torn: %d markers up to %d, missing %s'
                         % (len(markers), markers[-1], _ranges(missing)))
