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

"""The guest network's bring-up and tear-down, in the order they run.

``up`` calls, in this order (cli.py):

- ``start_watch()``: the netwatch service (every address and route event
  of the root namespace goes to log/netwatch.log) and the baseline, before
  anything of the network exists;
- ``start_switch()``: Open vSwitch (ovs.py), NETNS_EXT on br-ex, and the
  guard chain;
- ``start_forwarder()``: the cloud's APIs on 127.0.0.1 inside NETNS_EXT,
  for tempest (tools/minicloud/minicloud_nsforward.py);
- ``create_provider_network()``: once neutron's agents report alive, the
  shared flat network and its subnet, and their DHCP server (dnsmasq in a
  qdhcp- namespace) running.

``down`` calls ``teardown()`` once the cloud's domains are gone,
``stop_watch()`` last, and then ``check()``: what is left, and whether
the root namespace ever had an address or a route in a guest network
(network.py), both fatal.
"""

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time

from minicloud_lib.config import FORWARDED
from minicloud_lib.config import log
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import NETNS_EXT
from minicloud_lib.config import NETWORK_NAME
from minicloud_lib.config import path
from minicloud_lib.config import PORTS
from minicloud_lib.config import PROVIDER_CIDR
from minicloud_lib.config import START_TIMEOUT
from minicloud_lib.config import SUBNET_NAME
from minicloud_lib import network
from minicloud_lib import neutron_conf
from minicloud_lib import ovs
from minicloud_lib import processes
from minicloud_lib import REPO

AGENTS = ('Open vSwitch agent', 'DHCP agent', 'Metadata agent')
NETWORK_RECORD = 'network.json'   # under run/: the ids up created


def start_watch():
    processes.start(network.NETWATCH, network.NETWATCH_CMD)
    network.take_baseline()


def start_switch():
    # The guard first: iptables takes rules for links not there yet.
    for cmd in network.guard_commands():
        processes.run(cmd, 'guard')
    ovs.start()
    ovs.create_ext_netns()


def start_forwarder():
    ports = [str(PORTS[name]) for name in FORWARDED]
    processes.start('api-forward', [
        sys.executable, os.path.join(REPO, 'tools', 'minicloud',
                                     'minicloud_nsforward.py'),
        NETNS_EXT] + ports)

    def listening():
        out = network.read(('ip', 'netns', 'exec', NETNS_EXT, 'ss', '-Htln'))
        return all(':%s ' % p in out for p in ports)
    processes.wait_for('the API forwarder', listening, service='api-forward')


def _agents_alive(openstack):
    agents = openstack('network', 'agent', 'list')
    alive = {a['Agent Type'] for a in agents if a['Alive']}
    return all(kind in alive for kind in AGENTS)


def create_provider_network(openstack):
    """The network tempest's servers get, once its DHCP server runs."""
    t0 = time.monotonic()
    processes.wait_for('neutron\'s agents',
                       lambda: _agents_alive(openstack),
                       service='neutron-openvswitch-agent')
    log('neutron agents alive after %.0f s', time.monotonic() - t0)
    net = openstack('network', 'create', '--share',
                    '--provider-network-type', 'flat',
                    '--provider-physical-network', neutron_conf.PHYSNET,
                    NETWORK_NAME)
    cidr = ipaddress.ip_network(PROVIDER_CIDR)
    hosts = list(cidr.hosts())
    openstack('subnet', 'create', '--network', net['id'],
              '--subnet-range', PROVIDER_CIDR,
              '--gateway', ovs.gateway().split('/')[0],
              '--allocation-pool', 'start=%s,end=%s' % (hosts[9], hosts[199]),
              '--dns-nameserver', '0.0.0.0', SUBNET_NAME)
    with open(path('run', NETWORK_RECORD), 'w') as f:
        json.dump({'network': net['id']}, f)

    def dhcp_ready():
        ports = openstack('port', 'list', '--network', net['id'],
                          '--device-owner', 'network:dhcp', '--long')
        return (ports and all(p['Status'] == 'ACTIVE' for p in ports)
                and os.path.exists(path('neutron', 'dhcp', net['id'],
                                        'pid')))
    processes.wait_for('the DHCP server of %s' % NETWORK_NAME, dhcp_ready,
                       timeout=START_TIMEOUT,
                       service='neutron-dhcp-agent')
    log('network %s (%s) up, DHCP serving, after %.0f s', NETWORK_NAME,
        PROVIDER_CIDR, time.monotonic() - t0)
    return net['id']


def network_id():
    with open(path('run', NETWORK_RECORD)) as f:
        return json.load(f)['network']


def _delete_netns(name):
    """Kill what runs in one of our namespaces, then delete it.

    dnsmasq and haproxy (the DHCP agent's, which leave its process group)
    in a qdhcp- one; whatever tempest left in NETNS_EXT.
    """
    pids = network.read(('ip', 'netns', 'pids', name)).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    processes.run(('ip', 'netns', 'del', name), 'ovs')


def _remove_guard():
    listings = [network.read(cmd) for cmd in network.GUARD_LISTINGS]
    for cmd in network.guard_removal_commands(listings):
        processes.run(cmd, 'guard')


def teardown():
    """Everything the network made, after the agents have stopped.

    Every step runs whatever happened to the one before; returns what
    failed, as sentences.
    """
    errors = []

    def step(what, func, *args):
        try:
            func(*args)
        except (MinicloudError, OSError, subprocess.SubprocessError) as e:
            errors.append('%s: %s' % (what, e))
    step('deleting the veth', ovs.delete_veth)
    try:
        names = network.our_netns(
            network.netns_names(network.read(network.IP_NETNS)),
            network.dhcp_network_ids())
    except MinicloudError as e:
        errors.append('listing namespaces: %s' % e)
        names = []
    for name in names:
        step('deleting the namespace %s' % name, _delete_netns, name)
    step('stopping Open vSwitch', ovs.teardown)
    step('removing the guard chain', _remove_guard)
    return errors


def stop_watch():
    processes.stop(network.NETWATCH)


def check():
    """After ``down``: sentences for what is left or was ever wrong."""
    problems = network.leftovers()
    pid = processes.pid_of(network.NETWATCH)
    if pid:
        problems.append('service %s (pid %d)' % (network.NETWATCH, pid))
    if os.path.exists(path('run', network.BASELINE)):
        problems += ['root namespace: %s' % v
                     for v in network.root_ns_violations()]
    return problems
