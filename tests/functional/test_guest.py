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

"""The marker guest that snapshot tests rely on really writes markers.

Snapshot tests judge a copy by the markers in it, so this checks the
instrument itself: the guest boots under libvirt, writes markers in
order, and a copy of its disk holds a growing prefix 1..K that agrees
with what the guest reported on its serial console.  libvirtd and the
boot files come from conftest's libvirt_conn and boot_files fixtures;
nothing here skips.

The guest's SSH side (for guests with a NIC) is checked without booting
here: the initramfs holds dropbear with every library it loads, the
scripts parse, and the DHCP event script sets the routes it should.
The minicloud boots it with a network (tests/e2e, tempest).
"""

import os
import re
import shlex
import stat
import subprocess
import uuid

import libvirt
import pytest

from tests.testbed import guest
from tests.testbed import libvirtd


def _remove_domain(dom_uuid):
    """Destroy and undefine the domain, on a fresh connection.

    A fresh connection still works if libvirtd restarted mid-test.
    """
    conn = libvirt.open(libvirtd.URI)
    try:
        dom = conn.lookupByUUIDString(dom_uuid)
        if dom.isActive():
            dom.destroy()
        if dom.isPersistent():
            dom.undefine()
    except libvirt.libvirtError as e:
        if e.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
            raise
    finally:
        conn.close()


def test_guest_writes_consistent_markers(libvirt_conn, boot_files,
                                         qemu_tmp_path):
    tmp_path = qemu_tmp_path
    kernel, initrd = boot_files
    base = tmp_path / 'base.raw'
    disk = tmp_path / 'disk'
    log = str(tmp_path / 'console.log')
    # A qcow2 overlay on a raw base, like a nova instance disk.
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'raw', str(base),
                    '64M'], check=True)
    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
                    '-b', str(base), str(disk)], check=True)
    dom_uuid = str(uuid.uuid4())
    xml = guest.domain_xml(dom_uuid, 'instance-%s' % dom_uuid[:8],
                           str(disk), 'qcow2', kernel, initrd, log,
                           mode='markers')
    libvirt_conn.createXML(xml, 0)
    try:
        guest.wait_for_console(log, guest.READY, timeout=120)
        guest.wait_for_console(log, '\nMARK 50\n', timeout=120)
        done = guest.last_console_mark(log)
        first = guest.check_consistent(guest.read_markers(str(disk),
                                                          'qcow2'))
        # Every marker the guest reported is on disk; at most the one
        # being written when the copy ended can be ahead of the log.
        assert done <= first <= guest.last_console_mark(log) + 1
        guest.wait_for_console(log, '\nMARK %d\n' % (first + 20),
                               timeout=120)
        second = guest.check_consistent(guest.read_markers(str(disk),
                                                           'qcow2'))
        assert second >= first + 20
    finally:
        _remove_domain(dom_uuid)


def test_read_markers_reports_gaps(tmp_path):
    """A torn copy must fail check_consistent, or the tests prove nothing."""
    image = tmp_path / 'torn.raw'
    with open(image, 'wb') as f:
        f.truncate(guest.MARKER_BASE + 16 * guest.MARKER_SIZE)
        for k in (1, 2, 3, 5, 6, 9):
            f.seek(guest.MARKER_BASE + k * guest.MARKER_SIZE)
            f.write(b'SNAPMARK%010d' % k)
    markers = guest.read_markers(str(image), 'raw')
    assert markers == [1, 2, 3, 5, 6, 9]
    assert guest.check_consistent(markers[:3]) == 3
    assert guest.check_consistent([]) == 0
    with pytest.raises(AssertionError, match='missing 4, 7-8'):
        guest.check_consistent(markers)


def test_parse_ldd():
    out = (
        '\tlinux-vdso.so.1 (0x00007ffc8b5f6000)\n'
        '\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 '
        '(0x00007f78daf8b000)\n'
        '\tlibc.so.6 => /usr/lib/x86_64-linux-gnu/libc.so.6 '
        '(0x00007f78dad6d000)\n'
        '\t/lib64/ld-linux-x86-64.so.2 (0x00007f78db0e9000)\n')
    assert guest.parse_ldd(out) == [
        ('lib/x86_64-linux-gnu/libz.so.1',
         '/lib/x86_64-linux-gnu/libz.so.1'),
        ('lib/x86_64-linux-gnu/libc.so.6',
         '/usr/lib/x86_64-linux-gnu/libc.so.6'),
        ('lib64/ld-linux-x86-64.so.2', '/lib64/ld-linux-x86-64.so.2')]
    with pytest.raises(RuntimeError, match='libtomcrypt.so.1 not found'):
        guest.parse_ldd('\tlibtomcrypt.so.1 => not found\n')


def test_files_digest_covers_paths_modes_and_bytes():
    files = {'init': (0o755, b'#!/bin/sh'), 'root': (0o700, None)}
    digest = guest.files_digest(files)
    assert guest.files_digest(dict(reversed(list(files.items())))) == digest
    for change in ({'init': (0o755, b'#!/bin/sh ')},
                   {'init': (0o644, b'#!/bin/sh')},
                   {'root': (0o755, None)},
                   {'lib/libz.so.1': (0o755, b'')}):
        assert guest.files_digest({**files, **change}) != digest


def test_init_loads_the_modules_it_ships():
    """insmod takes no dependencies: the script's order is the load order."""
    assert ('for m in %s; do' % ' '.join(guest.MODULES)
            in guest.INIT_SCRIPT)
    loads = re.findall(r'^ +load (\w+)', guest.INIT_SCRIPT, re.M)
    assert tuple(loads) == guest.NET_MODULES
    assert 'load virtio_net csum=0 gso=0\n' in guest.INIT_SCRIPT


@pytest.mark.parametrize('name', ['INIT_SCRIPT', 'UDHCPC_SCRIPT',
                                  'SUDO_SCRIPT', 'NOHUP_SCRIPT'])
def test_scripts_parse(name, tmp_path):
    script = tmp_path / name
    script.write_text(getattr(guest, name))
    subprocess.run([guest.BUSYBOX, 'sh', '-n', str(script)], check=True)


def _udhcpc_event(tmp_path, event, **lease):
    """Run the DHCP event script with ip stubbed out; return the ip calls.

    busybox sh runs its own applets before anything on PATH, so the stub
    is a shell function, defined before the script is sourced.  In case
    it ever is not used, the script runs in a network namespace of its
    own, on an interface that does not exist: the host's network is never
    touched.
    """
    calls = tmp_path / 'calls'
    calls.write_text('')
    stub = tmp_path / 'stub'
    stub.write_text('ip() { echo "ip $*" >> %s; }\n' % calls)
    script = tmp_path / 'default.script'
    script.write_text(guest.UDHCPC_SCRIPT)
    subprocess.run(['unshare', '--net', guest.BUSYBOX, 'sh', '-c',
                    '. %s; . %s' % (shlex.quote(str(stub)),
                                    shlex.quote(str(script))),
                    'sh', event],
                   env=dict(lease, interface='snaptest0', PATH='/bin'),
                   check=True)
    return calls.read_text().splitlines()


def test_udhcpc_script_applies_option_121(tmp_path):
    """neutron's routes, with the metadata service and the default route."""
    assert _udhcpc_event(
        tmp_path, 'bound', ip='10.250.0.12', mask='24',
        router='10.250.0.1', serverid='10.250.0.2',
        staticroutes='10.250.0.0/24 0.0.0.0 169.254.169.254/32 10.250.0.2 '
                     '0.0.0.0/0 10.250.0.1') == [
        'ip -4 addr flush dev snaptest0',
        'ip addr add 10.250.0.12/24 dev snaptest0',
        'ip route replace 10.250.0.0/24 dev snaptest0',
        'ip route replace 169.254.169.254/32 via 10.250.0.2 dev snaptest0',
        'ip route replace 0.0.0.0/0 via 10.250.0.1 dev snaptest0']


def test_udhcpc_script_without_option_121(tmp_path):
    """The router, and the metadata service at the DHCP server."""
    assert _udhcpc_event(
        tmp_path, 'bound', ip='10.0.0.5', mask='28', mtu='1450',
        router='10.0.0.1 10.0.0.14', serverid='10.0.0.2') == [
        'ip -4 addr flush dev snaptest0',
        'ip addr add 10.0.0.5/28 dev snaptest0',
        'ip link set dev snaptest0 mtu 1450',
        'ip route replace default via 10.0.0.1 dev snaptest0',
        'ip route replace 169.254.169.254/32 via 10.0.0.2 dev snaptest0']


def test_udhcpc_script_deconfig(tmp_path):
    assert _udhcpc_event(tmp_path, 'deconfig') == [
        'ip link set dev snaptest0 up', 'ip -4 addr flush dev snaptest0']


def test_initramfs_holds_ssh_server_and_its_libraries(boot_files,
                                                      tmp_path):
    """dropbear and dropbearkey load only libraries from the initramfs.

    The unpacked tree's own dynamic loader, without ld.so.cache and with
    only the tree's library directory, resolves and runs them: a library
    missing from the archive would resolve to the host's copy instead.
    """
    _kernel, initrd = boot_files
    root = tmp_path / 'root'
    root.mkdir()
    with open(initrd, 'rb') as f:
        subprocess.run(['cpio', '--quiet', '-i', '-d',
                        '--no-absolute-filenames'], stdin=f, cwd=root,
                       check=True)
    for name in ('init', 'bin/busybox', 'bin/sudo', 'bin/nohup',
                 'etc/udhcpc/default.script', 'usr/sbin/dropbear',
                 'usr/bin/dropbearkey'):
        assert os.access(root / name, os.X_OK), name
    for name in guest.MODULES + guest.NET_MODULES:
        assert (root / 'lib/modules' / (name + '.ko')).is_file(), name
    assert (root / 'init').read_text() == guest.INIT_SCRIPT
    assert (root / 'etc/passwd').read_text() == \
        'root:x:0:0:root:/root:/bin/sh\n'
    assert (root / 'etc/shells').read_text() == '/bin/sh\n'
    # dropbear refuses an authorized_keys under a group-writable home.
    assert stat.S_IMODE((root / 'root').stat().st_mode) == 0o700
    loader = [str(root / 'lib64/ld-linux-x86-64.so.2'), '--inhibit-cache',
              '--library-path', str(root / guest.LIBDIR)]
    for binary in ('usr/sbin/dropbear', 'usr/bin/dropbearkey'):
        out = subprocess.run(loader + ['--list', str(root / binary)],
                             stdout=subprocess.PIPE, check=True,
                             universal_newlines=True).stdout
        libs = guest.parse_ldd(out)
        assert len(libs) > 3, out
        for _path, host_path in libs:
            assert host_path.startswith(str(root) + '/'), out
    key = tmp_path / 'host_key'
    out = subprocess.run(loader + [str(root / 'usr/bin/dropbearkey'), '-t',
                                   'ed25519', '-f', str(key)],
                         stdout=subprocess.PIPE, check=True,
                         universal_newlines=True).stdout
    assert 'ssh-ed25519 ' in out
