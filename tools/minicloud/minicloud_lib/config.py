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

"""Where the minicloud lives and how its services are configured.

The constants (state directory, venv, ports, passwords, flavors, the
guest networks and the names the cloud gives its namespaces, links and
firewall chain, the services in the order ``down`` stops them, timeouts,
how nova-compute runs as the user nova), the error every step raises and
the log line, the paths and URLs built from them, and the configuration
files ``up`` writes: each service's under ``etc/<service>/``, nova-compute's
/etc/nova/minicloud-compute.conf (root:nova 0640) and ``clouds.yaml``.
"""

import json
import os
import pwd
import shutil
import sys
import time


STATE = os.path.abspath(os.environ.get(
    'MINICLOUD_DIR', '/var/tmp/nova-snapdriver-minicloud'))
VENV = sys.prefix
BIN = os.path.join(VENV, 'bin')
GUEST_CACHE = os.environ.get('SNAPDRIVER_GUEST_CACHE',
                             '/var/tmp/nova-snapdriver-guest')

HOST = '127.0.0.1'
PORTS = {
    'mysql': 13306,
    'rabbitmq': 5672,
    'keystone': 15000,
    'glance': 19292,
    'placement': 18778,
    'nova-api': 18774,
    'neutron': 19696,
    'nova-metadata': 18775,
    'ovsdb': 6640,          # Open vSwitch's database, for neutron and os-vif
    'openflow': 16633,      # the ovs agent's OpenFlow controller
}
# The APIs tempest reaches from inside NETNS_EXT: the forwarder listens
# on the same 127.0.0.1 ports there (tools/minicloud/minicloud_nsforward.py).
FORWARDED = ('keystone', 'glance', 'placement', 'nova-api', 'neutron')
REGION = 'RegionOne'
ADMIN_PASSWORD = 'minicloud-admin'
SERVICE_PASSWORD = 'minicloud-service'
COMPUTE_HOST = 'minicloud'
# (name, RAM MiB, disk GB, vCPUs): tempest's flavor_ref and flavor_ref_alt.
FLAVORS = (('mc.tiny', 192, 1, 1), ('mc.small', 256, 1, 1))
GUEST_DISK_MIB = 64
GUEST_CMDLINE = 'console=ttyS0 %s'
# ``down`` stops the OpenStack services together, then the network, the
# message bus and the database (cli.py says why in that order).
SERVICES = ('nova-compute', 'nova-scheduler', 'nova-conductor', 'nova-api',
            'nova-metadata', 'neutron-dhcp-agent', 'neutron-metadata-agent',
            'neutron-openvswitch-agent', 'neutron-rpc', 'neutron',
            'api-forward', 'placement', 'glance', 'keystone',
            'ovs-vswitchd', 'ovsdb-server', 'rabbitmq', 'mysql')
# The network's services: stopped after the cloud's domains are gone
# (libvirt unplugs their taps through ovsdb-server).
NETWORK_SERVICES = ('ovs-vswitchd', 'ovsdb-server')
# Guest networking (issue 15): guest traffic stays inside network
# namespaces the minicloud creates; the root namespace gets no address and
# no route in GUEST_NETS, and network.py shows that it never had one.
PROVIDER_CIDR = '10.250.0.0/24'        # the shared flat provider network
NETWORK_NAME = 'minicloud-net'         # ... as neutron names it
SUBNET_NAME = 'minicloud-subnet'
METADATA_SECRET = 'minicloud-metadata'  # neutron's metadata agent to nova
METADATA_CIDR = '169.254.169.254/32'   # served in neutron's qdhcp- netns
GUEST_NETS = (PROVIDER_CIDR, METADATA_CIDR)
NETNS_EXT = 'snapdriver-ext'   # the one non-guest address on the network
VETH = ('snapext0', 'ext0')    # (br-ex's port in the root netns, its peer)
OVS_BRIDGES = ('br-int', 'br-ex')
DHCP_NETNS_PREFIX = 'qdhcp-'   # neutron's, + the network's id
# Chain of ours in iptables, ip6tables and arptables: the root stack
# drops what it sees on the guest-side L2 (OVS forwards through packet
# sockets, which netfilter does not see).
GUARD_CHAIN = 'MINICLOUD-GUARD'
GUARD_INTERFACES = ('tap+', VETH[0]) + OVS_BRIDGES + ('ovs-netdev',)
CALL_TIMEOUT = 120      # any one command or HTTP call
START_TIMEOUT = 120     # a service answering after its start
STOP_TIMEOUT = 10       # SIGTERM to SIGKILL
HOST_MAP_TIMEOUT = 120  # nova-compute registering with placement/cell

# nova-compute as a compute host runs it (see tools/host/setup-compute-host).
COMPUTE_USER = 'nova'
COMPUTE_CONF = '/etc/nova/minicloud-compute.conf'
ROOTWRAP = 'sudo nova-rootwrap /etc/nova/rootwrap.conf'
# privsep contexts whose helper_command is set here: through rootwrap's
# privsep-helper filter (nova's compute.filters); oslo.privsep appends the
# context's own --privsep_context and --privsep_sock_path.  os-vif's
# vif_plug_ovs context (servers have NICs) goes through rootwrap by its
# own default, which oslo.rootwrap lets through as it lets any
# privsep-helper command (it always adds that filter).
PRIVSEP_SECTIONS = ('nova_sys_admin', 'privsep_osbrick')
# A clean environment: no PATH entry or TMPDIR of root's (privsep's socket
# must be under /tmp for rootwrap's filter).
COMPUTE_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'


class MinicloudError(Exception):
    pass


def log(msg, *args):
    stamp = time.strftime('%H:%M:%S')
    print('minicloud %s: %s' % (stamp, msg % args if args else msg),
          flush=True)


def path(*parts):
    return os.path.join(STATE, *parts)


def url(service, suffix=''):
    return 'http://%s:%d%s' % (HOST, PORTS[service], suffix)


def db_url(name):
    return ('mysql+pymysql://root@localhost/%s?unix_socket=%s&charset=utf8'
            % (name, path('mysql', 'mysql.sock')))


def authtoken(user):
    """[keystone_authtoken] of a service: its own user, plus token checks."""
    return (service_auth('keystone_authtoken', user) +
            'www_authenticate_uri = %s/v3\n'
            'service_token_roles_required = true\n' % url('keystone'))


def service_auth(section, user='nova'):
    return """\
[{section}]
auth_type = password
auth_url = {keystone}/v3
user_domain_name = Default
project_domain_name = Default
project_name = service
username = {user}
password = {password}
region_name = {region}
""".format(section=section, keystone=url('keystone'), user=user,
           password=SERVICE_PASSWORD, region=REGION)


def write(relpath, text):
    with open(path(relpath), 'w') as f:
        f.write(text)


def copy_from_venv(src, dst):
    shutil.copy(os.path.join(VENV, 'etc', src), path(dst))


#: Every service's oslo.messaging transport.
RABBIT = 'rabbit://guest:guest@%s:%d/' % (HOST, PORTS['rabbitmq'])


def configure():
    """Every service's configuration but neutron's (neutron_conf)."""
    rabbit = RABBIT
    write('etc/keystone/keystone.conf', """\
[DEFAULT]
[database]
connection = {db}
[token]
provider = fernet
[fernet_tokens]
key_repository = {state}/etc/keystone/fernet-keys
[fernet_receipts]
key_repository = {state}/etc/keystone/fernet-keys
[credential]
key_repository = {state}/etc/keystone/credential-keys
[identity]
# bcrypt's cheapest cost: tempest makes and logs in dozens of users, and
# at the default (12) each hash takes a quarter of a CPU second of the
# two cores everything here shares.
password_hash_rounds = 4
""".format(db=db_url('keystone'), state=STATE))

    copy_from_venv('glance/glance-api-paste.ini', 'etc/glance')
    write('etc/glance/glance-api.conf', """\
[DEFAULT]
enabled_backends = fs:file
image_cache_dir = {state}/glance/cache
worker_self_reference_url = {url}
[database]
connection = {db}
[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {state}/glance/images
[os_glance_staging_store]
filesystem_store_datadir = {state}/glance/staging
[os_glance_tasks_store]
filesystem_store_datadir = {state}/glance/tasks
[oslo_concurrency]
lock_path = {state}/lock/glance
[paste_deploy]
flavor = keystone
config_file = {state}/etc/glance/glance-api-paste.ini
{authtoken}""".format(state=STATE, url=url('glance'), db=db_url('glance'),
                      authtoken=authtoken('glance')))

    write('etc/placement/placement.conf', """\
[DEFAULT]
[api]
auth_strategy = keystone
[placement_database]
connection = {db}
{authtoken}""".format(db=db_url('placement'),
                      authtoken=authtoken('placement')))

    copy_from_venv('neutron/api-paste.ini', 'etc/neutron')

    copy_from_venv('nova/api-paste.ini', 'etc/nova')
    write('etc/nova/nova.conf', nova_conf(rabbit, path('lock', 'nova')))
    # nova-compute's own: its lock_path is nova's, and privsep starts its
    # helper through rootwrap, whose filter wants a config file under /etc.
    privsep = ''.join(
        '[%s]\nhelper_command = %s privsep-helper --config-file %s\n'
        % (section, ROOTWRAP, COMPUTE_CONF) for section in PRIVSEP_SECTIONS)
    install_compute_conf(COMPUTE_CONF, nova_conf(
        rabbit, path('lock', 'nova-compute')) + privsep)

    # For the CLI, the e2e tests and tempest's configuration.
    with open(path('clouds.yaml'), 'w') as f:
        json.dump({'clouds': {'minicloud': {
            'auth': {'auth_url': url('keystone', '/v3'),
                     'username': 'admin', 'password': ADMIN_PASSWORD,
                     'project_name': 'admin',
                     'user_domain_name': 'Default',
                     'project_domain_name': 'Default'},
            'region_name': REGION,
            'identity_api_version': 3,
            'api_timeout': CALL_TIMEOUT}}}, f, indent=2)


def _capture_method():
    """The nova.conf line of MINICLOUD_CAPTURE_METHOD; none: the default."""
    method = os.environ.get('MINICLOUD_CAPTURE_METHOD')
    return 'capture_method = %s' % method if method else ''


def nova_conf(rabbit, lock_path):
    return """\
[DEFAULT]
host = {host}
my_ip = {ip}
state_path = {state}/nova
instances_path = {state}/nova/instances
transport_url = {rabbit}
compute_driver = snapdriver.SnapLibvirtDriver
shutdown_timeout = 5
running_deleted_instance_action = log
# The guests are small and idle; let tempest's parallel servers fit.
initial_cpu_allocation_ratio = 8.0
initial_ram_allocation_ratio = 1.5
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = {state}/etc/nova/api-paste.ini
[api_database]
connection = {api_db}
[database]
connection = {db}
[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[libvirt]
virt_type = qemu
cpu_mode = none
[snapdriver]
# The driver's default, auto, which streams here (a pull-mode backup read
# over NBD, no temp image): 'minicloud methods' checks that it did.
# MINICLOUD_CAPTURE_METHOD picks another for a run.
{capture_method}
[vnc]
enabled = false
[spice]
enabled = false
[oslo_concurrency]
lock_path = {lock_path}
[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 0
{authtoken}{placement}{neutron}service_metadata_proxy = true
metadata_proxy_shared_secret = {secret}
{service_user}send_service_user_token = true
""".format(host=COMPUTE_HOST, ip=HOST, state=STATE, rabbit=rabbit,
           capture_method=_capture_method(),
           lock_path=lock_path, api_db=db_url('nova_api'), db=db_url('nova'),
           authtoken=authtoken('nova'),
           placement=service_auth('placement', 'placement'),
           neutron=service_auth('neutron'), secret=METADATA_SECRET,
           service_user=service_auth('service_user'))


def compute_ids():
    """(uid, gid) of the user nova-compute runs as."""
    try:
        user = pwd.getpwnam(COMPUTE_USER)
    except KeyError:
        raise MinicloudError('no user %r: run tools/host/setup-compute-host '
                             '(tools/minicloud/minicloud up does)'
                             % COMPUTE_USER)
    return user.pw_uid, user.pw_gid


def install_compute_conf(dest, text):
    """Write a config file nova-compute reads: root:nova, mode 0640.

    As distros install /etc/nova/nova.conf (it holds passwords).
    """
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = dest + '.new'
    with open(tmp, 'w') as f:
        f.write(text)
    os.chown(tmp, 0, compute_ids()[1])
    os.chmod(tmp, 0o640)
    os.rename(tmp, dest)


def give_to_compute(*dirs):
    """Make the directories nova-compute writes to its own."""
    uid, gid = compute_ids()
    for top in dirs:
        for root, subdirs, files in os.walk(top):
            for name in [root] + [os.path.join(root, n)
                                  for n in subdirs + files]:
                os.chown(name, uid, gid)
