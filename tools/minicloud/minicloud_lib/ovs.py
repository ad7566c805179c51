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

"""Open vSwitch for the minicloud: the userspace datapath and its plumbing.

This host's kernel has no openvswitch module (it has no modules at all),
and ``ovs-ctl start`` insists on loading it; so ovsdb-server and
ovs-vswitchd run directly, as two of the cloud's services, with
ovs-vswitchd on the userspace ("netdev") datapath only
(``--disable-system``).  Its ports are read and written through packet
sockets (taps, veths) in the root namespace: L2 only, no address there.

- ``start()``: the database (under ``$STATE/ovs``), served on the
  socket libvirtd's ``ovs-vsctl`` uses (/run/openvswitch/db.sock) and on
  127.0.0.1:6640 for neutron and os-vif; then ovs-vswitchd and the bridges
  br-int and br-ex, both ``datapath_type=netdev``.
- ``create_ext_netns()``: the namespace NETNS_EXT, the one place with an
  address on the provider network (its gateway), joined to br-ex by the
  veth VETH.  tempest runs there.
- ``delete_veth()`` and ``teardown()``: all of the above, in reverse, and
  nothing else: only names the cloud gave.

Refuses to start next to an Open vSwitch that is not ours.
"""

import contextlib
import ipaddress
import os
import socket

from minicloud_lib.config import MinicloudError
from minicloud_lib.config import NETNS_EXT
from minicloud_lib.config import NETWORK_SERVICES
from minicloud_lib.config import OVS_BRIDGES
from minicloud_lib.config import path
from minicloud_lib.config import PORTS
from minicloud_lib.config import PROVIDER_CIDR
from minicloud_lib.config import VETH
from minicloud_lib import network
from minicloud_lib import processes

# Fixed: libvirtd runs "ovs-vsctl" with its defaults to plug a guest's tap
# into br-int (nova's <virtualport type='openvswitch'>).
RUN_DIR = '/run/openvswitch'
DB_SOCK = os.path.join(RUN_DIR, 'db.sock')
SCHEMA = '/usr/share/openvswitch/vswitch.ovsschema'
LOG = 'ovs'   # log/ovs.log: the set-up commands


def gateway():
    """The provider network's gateway: NETNS_EXT's address, as ip/len."""
    net = ipaddress.ip_network(PROVIDER_CIDR)
    return '%s/%d' % (net.network_address + 1, net.prefixlen)


def vsctl(*args):
    processes.run(('ovs-vsctl', '--db=unix:' + DB_SOCK, '--timeout=20') +
                  args, LOG)


def _answers(sock_path):
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(2)
        try:
            s.connect(sock_path)
        except OSError:
            return False
    return True


def start():
    """ovsdb-server, ovs-vswitchd and the bridges; returns when they work."""
    if _answers(DB_SOCK):
        raise MinicloudError(
            'an Open vSwitch already answers on %s: the minicloud runs '
            'its own and shares none (stop that one first)' % DB_SOCK)
    if not os.path.isdir(RUN_DIR):
        os.makedirs(RUN_DIR)
        with open(path('run', 'ovs-run-dir.made'), 'w') as f:
            f.write('%s made by minicloud up\n' % RUN_DIR)
    os.makedirs(path('ovs'), exist_ok=True)
    db = path('ovs', 'conf.db')
    if not os.path.exists(db):
        processes.run(('ovsdb-tool', 'create', db, SCHEMA), LOG)
    common = ('-vconsole:info', '-vsyslog:off', '-vfile:off')
    processes.start('ovsdb-server', (
        'ovsdb-server', db, '--remote=punix:' + DB_SOCK,
        '--remote=db:Open_vSwitch,Open_vSwitch,manager_options',
        '--unixctl=' + path('run', 'ovsdb-server.ctl'),
        '--pidfile=' + path('run', 'ovsdb-server.ovs-pid')) + common)
    processes.wait_for('ovsdb-server', lambda: _answers(DB_SOCK),
                       service='ovsdb-server')
    vsctl('--no-wait', 'init')
    vsctl('--no-wait', 'set', 'Open_vSwitch', '.',
          'external_ids:system-id=minicloud',
          'external_ids:hostname=minicloud')
    # neutron's agents and os-vif connect here (as devstack sets it up).
    vsctl('--no-wait', 'set-manager',
          'ptcp:%d:127.0.0.1' % PORTS['ovsdb'])
    processes.start('ovs-vswitchd', (
        'ovs-vswitchd', 'unix:' + DB_SOCK, '--disable-system',
        '--disable-system-route',
        '--unixctl=' + path('run', 'ovs-vswitchd.ctl'),
        '--pidfile=' + path('run', 'ovs-vswitchd.ovs-pid')) + common)
    # Without --no-wait: returns once ovs-vswitchd has made the bridges.
    for bridge in OVS_BRIDGES:
        vsctl('--may-exist', 'add-br', bridge, '--', 'set', 'bridge',
              bridge, 'datapath_type=netdev')


def _disable_ipv6(dev):
    with open('/proc/sys/net/ipv6/conf/%s/disable_ipv6' % dev, 'w') as f:
        f.write('1\n')


def create_ext_netns():
    """NETNS_EXT with the gateway address, on br-ex through VETH."""
    outer, inner = VETH
    processes.run(('ip', 'netns', 'add', NETNS_EXT), LOG)
    processes.run(('ip', 'link', 'add', outer, 'type', 'veth', 'peer',
                   'name', inner, 'netns', NETNS_EXT), LOG)
    # The root end is a switch port: no address, no link-local either.
    _disable_ipv6(outer)
    processes.run(('ip', 'link', 'set', outer, 'up'), LOG)
    inside = ('ip', '-n', NETNS_EXT)
    processes.run(inside + ('link', 'set', 'lo', 'up'), LOG)
    processes.run(inside + ('addr', 'add', gateway(), 'dev', inner), LOG)
    processes.run(inside + ('link', 'set', inner, 'up'), LOG)
    # The userspace datapath drops frames whose checksum was left to the
    # NIC (it reads them through a packet socket): checksum in software.
    processes.run(('ip', 'netns', 'exec', NETNS_EXT, 'ethtool', '-K',
                   inner, 'tx', 'off'), LOG)
    vsctl('--may-exist', 'add-port', 'br-ex', outer)


def delete_veth():
    """VETH, if there: its root end first, which takes the peer at once.

    (Deleting NETNS_EXT first would remove the pair in the background,
    and a check right after could still see it.)
    """
    if os.path.exists('/sys/class/net/%s' % VETH[0]):
        processes.run(('ip', 'link', 'del', VETH[0]), LOG)


def teardown():
    """Remove the bridges and the daemons, and any link of theirs left.

    NETNS_EXT and VETH go first (guestnet.teardown).  ovs-vswitchd's taps
    (the bridges, ovs-netdev) normally go with it; if it died before
    ``down``, they may outlive it, and are deleted by name and kind.
    """
    if processes.pid_of('ovs-vswitchd') and _answers(DB_SOCK):
        for bridge in OVS_BRIDGES:
            vsctl('--if-exists', 'del-br', bridge)
    processes.stop(*NETWORK_SERVICES)
    for link in network.our_links(network.read(network.IP_LINKS)):
        processes.run(('ip', 'link', 'del', link.split()[0]), LOG)
    for name in ('ovsdb-server.ctl', 'ovs-vswitchd.ctl',
                 'ovsdb-server.ovs-pid', 'ovs-vswitchd.ovs-pid'):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path('run', name))
    if os.path.exists(path('run', 'ovs-run-dir.made')):
        with contextlib.suppress(OSError):
            os.rmdir(RUN_DIR)   # only if empty: nothing else of OVS there
        os.unlink(path('run', 'ovs-run-dir.made'))
