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

"""neutron's configuration for a networked minicloud (issue 15): the files.

ML2 with the openvswitch mechanism driver on the userspace datapath
(ovs.py), one shared flat provider network on ``physnet1`` (br-ex), and
the agents that make it work: openvswitch (L2), dhcp (dnsmasq in a
``qdhcp-`` namespace, which also serves the metadata address for an
isolated network) and metadata (to nova-metadata on loopback).  No L3
agent, router or floating IP: the host reaches guests from the netns
NETNS_EXT, which has the provider network's gateway address.

Why each setting departs from neutron's default is said where it is set.
``write_all`` writes them under ``etc/neutron/``.
"""

from minicloud_lib.config import authtoken
from minicloud_lib.config import BIN
from minicloud_lib.config import COMPUTE_HOST
from minicloud_lib.config import db_url
from minicloud_lib.config import HOST
from minicloud_lib.config import METADATA_SECRET
from minicloud_lib.config import path
from minicloud_lib.config import PORTS
from minicloud_lib.config import RABBIT
from minicloud_lib.config import service_auth
from minicloud_lib.config import STATE
from minicloud_lib.config import write

PHYSNET = 'physnet1'
# oslo.privsep's contexts in neutron's agents (neutron/privileged): each
# starts privsep-helper from the venv, as root already (no sudo).
PRIVSEP_SECTIONS = ('privsep', 'privsep_dhcp_release', 'privsep_ovs_vsctl',
                    'privsep_namespace', 'privsep_conntrack', 'privsep_link')
OVSDB = 'tcp:%s:%d' % (HOST, PORTS['ovsdb'])


def neutron_conf(rabbit):
    """neutron.conf: shared by the API, the RPC server and the agents."""
    privsep = ''.join('[%s]\nhelper_command = %s\n'
                      % (section, '%s/privsep-helper' % BIN)
                      for section in PRIVSEP_SECTIONS)
    return """\
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
# The binding's host must be nova-compute's, where the agents run.
host = {host}
transport_url = {rabbit}
api_workers = 1
# Read by neutron-rpc-server only; the RpcWorker also takes the agents'
# state reports (no separate report worker).
rpc_workers = 1
rpc_state_report_workers = 0
# nova waits for network-vif-plugged before it starts a guest.
notify_nova_on_port_status_changes = true
notify_nova_on_port_data_changes = true
send_events_interval = 1
api_paste_config = {state}/etc/neutron/api-paste.ini
state_path = {state}/neutron
[agent]
# Empty: the agents run as root.  (Today's "true" would turn every root
# command of an agent into "true ...", silently.)
root_helper =
[database]
connection = {db}
[oslo_concurrency]
lock_path = {state}/lock/neutron
{privsep}{authtoken}{nova}endpoint_type = public
""".format(host=COMPUTE_HOST, rabbit=rabbit, state=STATE,
           db=db_url('neutron'), privsep=privsep,
           authtoken=authtoken('neutron'),
           nova=service_auth('nova', 'neutron'))


ML2_CONF = """\
[ml2]
type_drivers = flat
tenant_network_types =
mechanism_drivers = openvswitch
extension_drivers = port_security
[ml2_type_flat]
flat_networks = {physnet}
[securitygroup]
# Security groups stay in the API (tempest makes them); the userspace
# datapath's conntrack firewall is not tested here.
firewall_driver = noop
""".format(physnet=PHYSNET)


def ovs_section():
    return ('[ovs]\n'
            'datapath_type = netdev\n'
            'integration_bridge = br-int\n'
            'ovsdb_connection = %s\n' % OVSDB)


def openvswitch_agent_ini():
    return ovs_section() + """\
bridge_mappings = {physnet}:br-ex
of_listen_address = {host}
# Not 6633, which another OpenFlow controller on the host may hold.
of_listen_port = {openflow}
[agent]
tunnel_types =
[securitygroup]
firewall_driver = noop
""".format(physnet=PHYSNET, host=HOST, openflow=PORTS['openflow'])


def dhcp_agent_ini():
    return """\
[DEFAULT]
interface_driver = openvswitch
# The network has no router: the DHCP port serves 169.254.169.254 and
# dnsmasq sends the route to it (option 121).
enable_isolated_metadata = true
# dnsmasq's DHCP log (log/dnsmasq/<network>/dhcp_dns_log): which lease
# each guest got, or why none (an address still leased to a deleted
# port's MAC, when neutron gives it again).
dnsmasq_base_log_dir = {logdir}
""".format(logdir=path('log', 'dnsmasq')) + ovs_section()


def metadata_agent_ini():
    return """\
[DEFAULT]
nova_metadata_host = {host}
nova_metadata_port = {port}
metadata_proxy_shared_secret = {secret}
metadata_workers = 1
""".format(host=HOST, port=PORTS['nova-metadata'],
           secret=METADATA_SECRET)


def write_all():
    """Every file of etc/neutron, through config.write."""
    write('etc/neutron/neutron.conf', neutron_conf(RABBIT))
    write('etc/neutron/ml2_conf.ini', ML2_CONF)
    write('etc/neutron/openvswitch_agent.ini', openvswitch_agent_ini())
    write('etc/neutron/dhcp_agent.ini', dhcp_agent_ini())
    write('etc/neutron/metadata_agent.ini', metadata_agent_ini())


def agent_config_files(agent):
    """The --config-file arguments of one agent's command line."""
    files = ['neutron.conf', 'ml2_conf.ini']
    files.append({'openvswitch': 'openvswitch_agent.ini',
                  'dhcp': 'dhcp_agent.ini',
                  'metadata': 'metadata_agent.ini'}[agent])
    args = []
    for name in files:
        args += ['--config-file', path('etc', 'neutron', name)]
    return args
