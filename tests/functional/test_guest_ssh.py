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

"""The test guest with a NIC: a DHCP lease, its key from metadata, SSH.

This is the guest the networked minicloud hands tempest (issue 15).  Here
it boots with QEMU alone, no libvirt and no neutron, in a network
namespace the test makes and removes:

- a tap (``snaptap0``) holds the gateway address, 10.252.0.1/24;
- dnsmasq serves DHCP on it, with option 121 routes as neutron's DHCP
  agent sends them (the metadata address via the gateway, and the
  default route);
- a Python HTTP server on 169.254.169.254:80 serves the EC2 path of the
  user's public key, as nova's metadata service does;
- paramiko, in the same namespace, logs in as root with the key and runs
  a command through ``sudo`` (tempest does both).

Nothing is added to the host's own namespace: no address, no route, no
link.  Whatever happens, the namespace and every process in it are gone
when the test ends.
"""

import shutil
import subprocess
import sys
import textwrap
import time

import paramiko
import pytest

from tests.testbed import guest
from tests.testbed.netns import Namespace
from tests.testbed.netns import run

NET = '10.252.0'
GATEWAY = NET + '.1'
TAP = 'snaptap0'
METADATA = '169.254.169.254'
# neutron's DHCP agent: host routes first, then the default route.
ROUTES = '%s/32,%s,0.0.0.0/0,%s' % (METADATA, GATEWAY, GATEWAY)

# Run inside the namespace: log in with the key and run a command.
PROBE = textwrap.dedent('''
    import sys
    import paramiko
    host, key_file, command = sys.argv[1:4]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(host, username='root',
                   pkey=paramiko.RSAKey.from_private_key_file(key_file),
                   look_for_keys=False, allow_agent=False, timeout=20,
                   banner_timeout=20, auth_timeout=20)
    _in, out, err = client.exec_command(command, timeout=30)
    sys.stdout.write(out.read().decode())
    sys.stderr.write(err.read().decode())
    sys.exit(out.channel.recv_exit_status())
''')


@pytest.fixture
def netns():
    for tool in ('dnsmasq', 'qemu-system-x86_64'):
        assert shutil.which(tool), (
            '%s is missing: run tools/host/install-host-deps' % tool)
    ns = Namespace()
    try:
        yield ns
    finally:
        ns.close()
    assert ns.name not in run('ip', 'netns', 'list').stdout


def _host_guest_lines():
    """Lines of the host namespace's addresses and routes in our nets."""
    out = '\n'.join(run(*argv).stdout for argv in (
        ('ip', '-o', 'addr'), ('ip', '-4', 'route', 'show', 'table', 'all'),
        ('ip', '-4', 'neigh')))
    return [line for line in out.splitlines()
            if NET + '.' in line or METADATA in line]


def _wait_listening(ns, port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ':%d ' % port in ns.run('ss', '-Hltn').stdout:
            return
        time.sleep(0.1)
    raise AssertionError('nothing listens on port %d in %s' % (port, ns.name))


def test_guest_gets_a_lease_its_key_and_ssh(netns, boot_files,
                                            qemu_tmp_path):
    tmp_path = qemu_tmp_path
    kernel, initrd = boot_files
    assert _host_guest_lines() == []
    # The user's key pair, RSA as nova makes them; the public half where
    # nova's metadata service serves it.
    key = paramiko.RSAKey.generate(2048)
    key_file = str(tmp_path / 'id_rsa')
    key.write_private_key_file(key_file)
    public = 'ssh-rsa %s snaptest\n' % key.get_base64()
    key_dir = tmp_path / 'metadata' / '2009-04-04' / 'meta-data' / \
        'public-keys' / '0'
    key_dir.mkdir(parents=True)
    (key_dir / 'openssh-key').write_text(public)

    netns.run('ip', 'link', 'set', 'lo', 'up')
    netns.run('ip', 'addr', 'add', METADATA + '/32', 'dev', 'lo')
    netns.run('ip', 'tuntap', 'add', 'dev', TAP, 'mode', 'tap')
    netns.run('ip', 'addr', 'add', GATEWAY + '/24', 'dev', TAP)
    netns.run('ip', 'link', 'set', TAP, 'up')
    netns.start([sys.executable, '-m', 'http.server', '--bind', METADATA,
                 '--directory', str(tmp_path / 'metadata'), '80'],
                str(tmp_path / 'metadata.log'))
    leases = tmp_path / 'leases'
    netns.start(['dnsmasq', '--no-daemon', '--conf-file=/dev/null',
                 '--port=0', '--no-resolv', '--user=root', '--group=root',
                 '--interface=' + TAP, '--bind-interfaces',
                 '--dhcp-range=%s.10,%s.20,255.255.255.0,1h' % (NET, NET),
                 '--dhcp-option=121,' + ROUTES,
                 '--dhcp-option=3,' + GATEWAY,
                 '--dhcp-leasefile=' + str(leases),
                 '--pid-file=' + str(tmp_path / 'dnsmasq.pid'),
                 '--log-dhcp'],
                str(tmp_path / 'dnsmasq.log'))
    _wait_listening(netns, 80)

    disk = str(tmp_path / 'disk.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', disk, '64M')
    console = str(tmp_path / 'console.log')
    netns.start(['qemu-system-x86_64', '-machine', 'pc,accel=tcg',
                 '-m', '256', '-nodefaults', '-display', 'none',
                 '-kernel', kernel, '-initrd', initrd,
                 '-append', 'console=ttyS0 snapmode=idle',
                 '-serial', 'file:' + console,
                 '-drive', 'file=%s,format=qcow2,if=virtio' % disk,
                 '-netdev', 'tap,id=n0,ifname=%s,script=no,downscript=no'
                 % TAP,
                 '-device', 'virtio-net-pci,netdev=n0'],
                str(tmp_path / 'qemu.log'))

    log = guest.wait_for_console(console, guest.SSH_READY, timeout=240)
    address = log.split(guest.SSH_READY + ' ip=')[1].split()[0]
    assert address.startswith(NET + '.'), log
    # The lease dnsmasq gave is the address the guest reports.
    assert address in leases.read_text()

    probe = tmp_path / 'probe.py'
    probe.write_text(PROBE)
    result = subprocess.run(
        ['ip', 'netns', 'exec', netns.name, sys.executable, str(probe),
         address, key_file,
         'sudo sh -c "id -u; cat /proc/cmdline; ip -4 route"'],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    uid, cmdline, routes = result.stdout.split('\n', 2)
    assert uid == '0'
    assert 'snapmode=idle' in cmdline
    # Option 121 applied: the metadata route and the default route.
    assert '169.254.169.254 via %s' % GATEWAY in routes
    assert 'default via %s' % GATEWAY in routes
    # The key came over HTTP from the metadata address.
    assert '/2009-04-04/meta-data/public-keys/0/openssh-key' in (
        tmp_path / 'metadata.log').read_text()
    # The host's own namespace never had an address, route or neighbour
    # in the guest's network.
    assert _host_guest_lines() == []
