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
"""

import glob
import gzip
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
DEBIAN_PACKAGES = ('linux-image-cloud-amd64', 'busybox-static', 'cpio')
# insmod does not resolve dependencies, so this order matters.
MODULES = ('virtio_ring', 'virtio', 'virtio_pci_modern_dev',
           'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_blk')
BUSYBOX = '/bin/busybox'

INIT_SCRIPT = r"""#!/bin/busybox sh
# PID 1 of the snapshot test guest; see tests/testbed/guest.py.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in %(modules)s; do
    insmod /lib/modules/$m.ko || echo "SNAPGUEST insmod $m failed"
done
mode=idle
marks=100000
for arg in $(cat /proc/cmdline); do
    case $arg in
        snapmode=*) mode=${arg#snapmode=} ;;
        snapmarks=*) marks=${arg#snapmarks=} ;;
    esac
done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 300 ]; do
    sleep 0.1
    i=$((i + 1))
done
[ -b /dev/vda ] || echo "SNAPGUEST NO DISK"
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
       'size': MARKER_SIZE, 'ready': READY}


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
    missing = [m for m in MODULES if m not in paths]
    if missing:
        raise RuntimeError('kernel %s lacks modules %s (want .ko or .ko.xz)'
                           % (version, ', '.join(missing)))
    return paths


def build_boot_files(cache_dir):
    """Return (kernel_path, initrd_path) for the marker guest.

    The initramfs is built once per kernel version and /init script and
    kept in cache_dir, so later calls only stat a file.
    """
    version, kernel = _find_kernel()
    digest = hashlib.sha256(INIT_SCRIPT.encode()).hexdigest()[:12]
    initrd = os.path.join(cache_dir, 'snapguest-%s-%s.cpio.gz'
                          % (version, digest))
    if os.path.exists(initrd):
        return kernel, initrd
    if not os.path.exists(BUSYBOX):
        raise _missing('Static busybox (%s)' % BUSYBOX)
    if not shutil.which('cpio'):
        raise _missing('cpio')
    modules = _module_paths(version)
    os.makedirs(cache_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as root:
        for sub in ('bin', 'dev', 'proc', 'sys', 'lib/modules'):
            os.makedirs(os.path.join(root, sub))
        shutil.copy(BUSYBOX, os.path.join(root, 'bin/busybox'))
        for name in MODULES:
            src = modules[name]
            opener = lzma.open if src.endswith('.xz') else open
            with opener(src, 'rb') as f:
                data = f.read()
            with open(os.path.join(root, 'lib/modules', name + '.ko'),
                      'wb') as f:
                f.write(data)
        with open(os.path.join(root, 'init'), 'w') as f:
            f.write(INIT_SCRIPT)
        os.chmod(os.path.join(root, 'init'), 0o755)
        names = sorted(os.path.relpath(os.path.join(d, n), root)
                       for d, dirs, files in os.walk(root)
                       for n in dirs + files)
        archive = subprocess.run(
            ['cpio', '--quiet', '-o', '-H', 'newc', '-R', '0:0'],
            cwd=root, input='\n'.join(names).encode(),
            stdout=subprocess.PIPE, check=True).stdout
        # Write then rename: concurrent test runs never see half a file.
        tmp = os.path.join(root, 'initrd')
        with open(tmp, 'wb') as f:
            f.write(gzip.compress(archive, compresslevel=6))
        os.replace(tmp, initrd)
    return kernel, initrd


def domain_xml(uuid, name, disk_path, disk_format, kernel, initrd,
               serial_log, mode='idle', marks=100000, virt_type='qemu',
               memory_mib=256, emulator=None):
    """Return libvirt XML for the guest, shaped like a nova instance.

    TCG (virt_type 'qemu') is the default because nested KVM does not
    boot this guest dependably.  No network and no graphics: the serial
    log file is the only channel back to the test.
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
    E(os_, 'cmdline').text = ('console=ttyS0 snapmode=%s snapmarks=%d'
                              % (mode, marks))
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
