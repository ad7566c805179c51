"""The guest network's bring-up and tear-down, in the order they run.

``up`` calls, in this order (cli.py):

- ``start_watch()``: the netwatch service (every address and route event
  of the root namespace goes to log/netwatch.log) and the baseline, before
  anything of the network exists;
- ``start_switch()``: Open vSwitch (ovs.py), NETNS_EXT on br-ex, and the
  guard chain;
- ``start_forwarder()``: the cloud's APIs on 127.0.0.1 inside NETNS_EXT,
  for tempest (tools/minicloud_nsforward.py);
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
    ovs.start()
    ovs.create_ext_netns()
    for cmd in network.guard_commands():
        processes.run(cmd, 'guard')


def start_forwarder():
    ports = [str(PORTS[name]) for name in FORWARDED]
    processes.start('api-forward', [
        sys.executable, os.path.join(REPO, 'tools', 'minicloud_nsforward.py'),
        NETNS_EXT] + ports)

    def listening():
        res = subprocess.run(
            ('ip', 'netns', 'exec', NETNS_EXT, 'ss', '-Htln'),
            capture_output=True, text=True, check=True)
        return all(':%s ' % p in res.stdout for p in ports)
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
              '--gateway', str(hosts[0]),
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


def _kill_spawned():
    """dnsmasq and haproxy: the DHCP agent's children leave its group."""
    for line in network.our_processes(processes.stray_processes()):
        pid = int(line.split()[1].rstrip(':'))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def teardown():
    """Everything the network made, after the agents have stopped."""
    _kill_spawned()
    names = network.netns_names(network._read(network.IP_NETNS))
    for name in network.our_netns(names, network.dhcp_network_ids()):
        if name != NETNS_EXT:
            processes.run(('ip', 'netns', 'del', name), 'ovs')
    ovs.teardown()
    listings = [network._read(cmd) for cmd in network.GUARD_LISTINGS]
    for cmd in network.guard_removal_commands(listings):
        processes.run(cmd, 'guard')


def stop_watch():
    processes.stop(network.NETWATCH)


def check():
    """After ``down``: sentences for what is left or was ever wrong."""
    problems = network.leftovers()
    if os.path.exists(path('run', network.BASELINE)):
        problems += ['root namespace: %s' % v
                     for v in network.root_ns_violations()]
    return problems
