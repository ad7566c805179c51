#!/usr/bin/env python3
"""A real one-machine OpenStack whose nova-compute runs our driver.

    tools/minicloud up        bring the stack up (refused if it is up)
    tools/minicloud status    what runs, and where
    tools/minicloud down      stop everything, remove the cloud's domains
    tools/minicloud env       print the shell variables for the CLI

Run it through ``tools/minicloud`` (the shell wrapper), which installs the
host packages and the pinned Python environment first.  Everything listens
on 127.0.0.1 and keeps its state under one directory (``MINICLOUD_DIR``,
default /var/tmp/nova-snapdriver-minicloud):

    mysql/  rabbitmq/  etc/<service>/  log/<service>.log  run/<service>.pid
    nova/   (state_path: instances, our journal)   glance/   (image files)
    images/ (the tiny guest's kernel, initramfs and disk)   clouds.yaml

The services, each a real one from PyPI or Debian, started in its own
process group so that ``down`` can stop it with everything it spawned:

    MariaDB, RabbitMQ                          Debian's packages
    keystone, Glance, placement, nova-api,     gunicorn, through
    neutron (ML2, no agents, no plugins)       tools/minicloud_wsgi.py
    nova-conductor, nova-scheduler,            their console scripts
    nova-compute (compute_driver =
    snapdriver.SnapLibvirtDriver, TCG)

nova-compute runs as the system user ``nova``, as on a distro's or
devstack's compute host: it reaches libvirtd through the ``libvirt`` group's
socket and root only through ``sudo nova-rootwrap /etc/nova/rootwrap.conf``
(privsep's helper included).  ``tools/minicloud`` prepares the host for that
with tools/setup-compute-host.  Its configuration is
/etc/nova/minicloud-compute.conf (root:nova 0640; rootwrap's privsep filters
accept only a config file under /etc), its state_path ``nova/`` and its
lock_path are nova's; everything else stays root's.  ``down`` removes that
file too.

``up`` ends with flavors and the tiny guest's images in Glance: a Debian
cloud kernel (aki), a busybox initramfs (ari) and a small qcow2 disk
booted through them.  Two disk images differ only by their kernel command
line: ``minicloud-idle`` boots and waits, ``minicloud-markers`` writes
numbered markers to its disk (see tests/testbed/guest.py).

Every client call made here has a timeout, and a failed step stops ``up``
with the tail of the service's log; ``down`` is always safe to run.
"""

import argparse
import concurrent.futures
import contextlib
import fcntl
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tests.testbed import guest as test_guest  # noqa: E402
from tests.testbed import libvirtd  # noqa: E402

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
}
REGION = 'RegionOne'
ADMIN_PASSWORD = 'minicloud-admin'
SERVICE_PASSWORD = 'minicloud-service'
COMPUTE_HOST = 'minicloud'
# (name, RAM MiB, disk GB, vCPUs): tempest's flavor_ref and flavor_ref_alt.
FLAVORS = (('mc.tiny', 192, 1, 1), ('mc.small', 256, 1, 1))
GUEST_DISK_MIB = 64
GUEST_CMDLINE = 'console=ttyS0 snapmode=%s'
# ``down`` stops the OpenStack services together, then the message bus,
# then the database.
SERVICES = ('nova-compute', 'nova-scheduler', 'nova-conductor', 'nova-api',
            'neutron', 'placement', 'glance', 'keystone', 'rabbitmq',
            'mysql')
CALL_TIMEOUT = 120      # any one command or HTTP call
START_TIMEOUT = 120     # a service answering after its start
STOP_TIMEOUT = 10       # SIGTERM to SIGKILL
HOST_MAP_TIMEOUT = 120  # nova-compute registering with placement/cell

# nova-compute as a compute host runs it (see tools/setup-compute-host).
COMPUTE_USER = 'nova'
COMPUTE_CONF = '/etc/nova/minicloud-compute.conf'
ROOTWRAP = 'sudo nova-rootwrap /etc/nova/rootwrap.conf'
# privsep contexts nova-compute may start here, each through rootwrap's
# privsep-helper filter (nova's compute.filters), which appends the
# context's own --privsep_context and --privsep_sock_path.  vif_plug_* are
# never used: the servers have no NIC (and compute.filters has no filter
# for them).
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


def log_tail(name, lines=40):
    try:
        with open(path('log', name + '.log'), errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except FileNotFoundError:
        return '(no log)'


# ---------------------------------------------------------------------------
# Processes: one process group per service, found again by pid file.

def run(cmd, name, env=None, timeout=CALL_TIMEOUT, input=None):
    """Run a set-up command; its output goes to log/<name>.log."""
    with open(path('log', name + '.log'), 'a') as out:
        out.write('\n$ %s\n' % ' '.join(cmd))
        out.flush()
        try:
            res = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT,
                                 env=env, timeout=timeout, input=input)
        except subprocess.TimeoutExpired:
            raise MinicloudError('%s: timed out after %ss: %s\n%s'
                                 % (name, timeout, ' '.join(cmd),
                                    log_tail(name)))
    if res.returncode:
        raise MinicloudError('%s: exit %d: %s\n%s'
                             % (name, res.returncode, ' '.join(cmd),
                                log_tail(name)))


def start(name, cmd, env=None, cwd=STATE):
    """Start a long-running service in its own session (process group)."""
    out = open(path('log', name + '.log'), 'a')
    with out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True, cwd=cwd)
    with open(path('run', name + '.pid'), 'w') as f:
        f.write('%d\n' % proc.pid)
    return proc


def pid_of(name):
    """The pid (== process group id) of a service we started, if alive."""
    try:
        with open(path('run', name + '.pid')) as f:
            pid = int(f.read())
    except (FileNotFoundError, ValueError):
        return None
    # A service that died as our own child stays a zombie, which killpg
    # would still find, until it is reaped.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return None
    return pid


def stop(*names):
    """Stop services by process group: SIGTERM to all, SIGKILL later.

    Returns the names of those that were running.
    """
    pids = {name: pid_of(name) for name in names}
    pids = {name: pid for name, pid in pids.items() if pid is not None}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and any(map(pid_of, pids)):
        time.sleep(0.2)
    for name, pid in pids.items():
        if pid_of(name):
            log('%s ignored SIGTERM for %ss; SIGKILL', name, STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path('run', name + '.pid'))
    return [name for name in names if name in pids]


def wait_for(what, check, timeout=START_TIMEOUT, service=None):
    deadline = time.monotonic() + timeout
    while True:
        if service and not pid_of(service):
            raise MinicloudError('%s exited while starting:\n%s'
                                 % (service, log_tail(service)))
        try:
            if check():
                return
        except Exception:  # noqa: S110 (not up yet; keep polling)
            pass
        if time.monotonic() > deadline:
            raise MinicloudError('%s: not ready after %ss\n%s'
                                 % (what, timeout,
                                    log_tail(service) if service else ''))
        time.sleep(0.5)


def http_answers(address):
    """True once something answers HTTP there (any status code)."""
    try:
        urllib.request.urlopen(address, timeout=5).close()
    except urllib.error.HTTPError:
        pass
    return True


def port_open(port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((HOST, port)) == 0


def port_free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


# ---------------------------------------------------------------------------
# MariaDB and RabbitMQ, from Debian, started by hand (there is no systemd).

def start_mysql():
    datadir = path('mysql', 'data')
    run(['mariadb-install-db', '--no-defaults', '--datadir=' + datadir,
         '--user=root', '--auth-root-authentication-method=normal',
         '--skip-test-db'], 'mysql')
    start('mysql', [
        'mariadbd', '--no-defaults', '--datadir=' + datadir,
        '--socket=' + path('mysql', 'mysql.sock'),
        '--port=%d' % PORTS['mysql'], '--bind-address=' + HOST,
        '--user=root', '--skip-log-bin', '--innodb-buffer-pool-size=128M',
        '--max-connections=500', '--pid-file=' + path('mysql', 'pid')])
    wait_for('MariaDB', lambda: os.path.exists(path('mysql', 'mysql.sock')),
             service='mysql')
    sql = ''.join('CREATE DATABASE %s CHARACTER SET utf8;' % db for db in
                  ('keystone', 'glance', 'placement', 'neutron', 'nova_api',
                   'nova_cell0', 'nova'))
    run(['mariadb', '--no-defaults', '-S', path('mysql', 'mysql.sock'),
         '-u', 'root', '-e', sql], 'mysql')


def rabbit_env():
    env = dict(os.environ)
    env.update({
        'HOME': path('rabbitmq'),  # its Erlang cookie
        'RABBITMQ_NODENAME': 'rabbit@localhost',
        'RABBITMQ_NODE_IP_ADDRESS': HOST,
        'RABBITMQ_NODE_PORT': str(PORTS['rabbitmq']),
        'ERL_EPMD_ADDRESS': HOST,
        'RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS':
            '-kernel inet_dist_use_interface {127,0,0,1}',
        'RABBITMQ_MNESIA_BASE': path('rabbitmq', 'mnesia'),
        'RABBITMQ_LOG_BASE': path('log', 'rabbitmq.d'),
        'RABBITMQ_CONFIG_FILE': path('rabbitmq', 'rabbitmq'),
        'RABBITMQ_ENABLED_PLUGINS_FILE': path('rabbitmq', 'enabled_plugins'),
    })
    return env


RABBITMQ_BIN = '/usr/lib/rabbitmq/bin'


def start_rabbitmq():
    # The scripts in /usr/lib/rabbitmq/bin run as the caller; the ones in
    # /usr/sbin switch to the rabbitmq user, which cannot write STATE.
    with open(path('rabbitmq', 'enabled_plugins'), 'w') as f:
        f.write('[].\n')
    env = rabbit_env()
    start('rabbitmq', [os.path.join(RABBITMQ_BIN, 'rabbitmq-server')],
          env=env)
    # await_startup gives up at once while the node is not registered yet.
    wait_for('RabbitMQ', lambda: port_open(PORTS['rabbitmq']),
             service='rabbitmq')
    run([os.path.join(RABBITMQ_BIN, 'rabbitmqctl'), '--timeout', '90',
         'await_startup'], 'rabbitmq', env=env, timeout=100)


def stop_rabbitmq():
    if pid_of('rabbitmq'):
        with contextlib.suppress(MinicloudError):
            run([os.path.join(RABBITMQ_BIN, 'rabbitmqctl'), 'shutdown'],
                'rabbitmq', env=rabbit_env(), timeout=60)
    stop('rabbitmq')
    # epmd is started by Erlang outside rabbit's process group.
    subprocess.run(['epmd', '-kill'], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=10, check=False)


# ---------------------------------------------------------------------------
# Configuration files.

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


def configure():
    rabbit = 'rabbit://guest:guest@%s:%d/' % (HOST, PORTS['rabbitmq'])
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
    write('etc/neutron/neutron.conf', """\
[DEFAULT]
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = fake:/
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_paste_config = {state}/etc/neutron/api-paste.ini
state_path = {state}/neutron
[agent]
root_helper = true
[database]
connection = {db}
[oslo_concurrency]
lock_path = {state}/lock/neutron
{authtoken}""".format(state=STATE, db=db_url('neutron'),
                      authtoken=authtoken('neutron')))
    write('etc/neutron/ml2_conf.ini', """\
[ml2]
type_drivers = flat,local
tenant_network_types = local
mechanism_drivers =
extension_drivers = port_security
[securitygroup]
firewall_driver = noop
""")

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
# The driver's own way: the running disk streamed to Glance (a pull-mode
# backup read over NBD), no temp image.  MINICLOUD_CAPTURE_METHOD picks
# another for a run.
capture_method = {capture_method}
[vnc]
enabled = false
[spice]
enabled = false
[oslo_concurrency]
lock_path = {lock_path}
[oslo_messaging_rabbit]
heartbeat_timeout_threshold = 0
{authtoken}{placement}{neutron}{service_user}send_service_user_token = true
""".format(host=COMPUTE_HOST, ip=HOST, state=STATE, rabbit=rabbit,
           capture_method=os.environ.get('MINICLOUD_CAPTURE_METHOD',
                                         'stream'),
           lock_path=lock_path, api_db=db_url('nova_api'), db=db_url('nova'),
           authtoken=authtoken('nova'),
           placement=service_auth('placement', 'placement'),
           neutron=service_auth('neutron'),
           service_user=service_auth('service_user'))


def compute_ids():
    """(uid, gid) of the user nova-compute runs as."""
    try:
        user = pwd.getpwnam(COMPUTE_USER)
    except KeyError:
        raise MinicloudError('no user %r: run tools/setup-compute-host '
                             '(tools/minicloud up does)' % COMPUTE_USER)
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


def service_env(service):
    env = dict(os.environ)
    env['MINICLOUD_APP'] = service
    env['OS_%s_CONFIG_DIR' % service.upper()] = path('etc', service)
    if service == 'nova':
        env['OS_NOVA_CONFIG_FILES'] = 'api-paste.ini;nova.conf'
    if service == 'neutron':
        env['OS_NEUTRON_CONFIG_FILES'] = 'neutron.conf;ml2_conf.ini'
    return env


def start_wsgi(name, app):
    start(name, [
        os.path.join(BIN, 'gunicorn'), '--bind', '%s:%d' % (HOST, PORTS[name]),
        '--workers', '1', '--worker-class', 'gthread', '--threads', '8',
        '--timeout', '600', '--graceful-timeout', '5',
        '--pythonpath', os.path.join(REPO, 'tools'),
        'minicloud_wsgi:application'], env=service_env(app))


# ---------------------------------------------------------------------------
# Bring-up steps.

def nova_manage(*args):
    run([os.path.join(BIN, 'nova-manage'), '--config-file',
         path('etc/nova/nova.conf')] + list(args), 'nova-manage',
        timeout=300)


def setup_keystone():
    conf = ['--config-file', path('etc/keystone/keystone.conf')]
    manage = [os.path.join(BIN, 'keystone-manage')] + conf
    run(manage + ['db_sync'], 'keystone-manage', timeout=300)
    for what in ('fernet_setup', 'credential_setup'):
        run(manage + [what, '--keystone-user', 'root',
                      '--keystone-group', 'root'], 'keystone-manage')
    run(manage + ['bootstrap', '--bootstrap-password', ADMIN_PASSWORD,
                  '--bootstrap-region-id', REGION,
                  '--bootstrap-admin-url', url('keystone', '/v3'),
                  '--bootstrap-public-url', url('keystone', '/v3'),
                  '--bootstrap-internal-url', url('keystone', '/v3')],
        'keystone-manage')
    start_wsgi('keystone', 'keystone')
    wait_for('keystone', lambda: http_answers(url('keystone', '/v3')),
             service='keystone')
    register_services()


def register_services():
    """Service users, the service project, and the catalog."""
    from keystoneauth1 import identity
    from keystoneauth1 import session as ks_session
    from keystoneclient.v3 import client

    auth = identity.Password(
        auth_url=url('keystone', '/v3'), username='admin',
        password=ADMIN_PASSWORD, project_name='admin',
        user_domain_name='Default', project_domain_name='Default')
    ks = client.Client(session=ks_session.Session(auth=auth,
                                                  timeout=CALL_TIMEOUT))
    project = ks.projects.create('service', 'default')
    roles = {r.name: r for r in ks.roles.list()}
    for role in ('service',):
        if role not in roles:
            roles[role] = ks.roles.create(role)
    catalog = (('nova', 'compute', url('nova-api', '/v2.1')),
               ('glance', 'image', url('glance')),
               ('placement', 'placement', url('placement')),
               ('neutron', 'network', url('neutron')))
    for name, kind, address in catalog:
        user = ks.users.create(name, domain='default',
                               password=SERVICE_PASSWORD,
                               default_project=project)
        for role in ('admin', 'service'):
            ks.roles.grant(roles[role], user=user, project=project)
        service = ks.services.create(name, type=kind)
        for interface in ('public', 'internal'):
            ks.endpoints.create(service, address, interface=interface,
                                region=REGION)


def setup_glance():
    run([os.path.join(BIN, 'glance-manage'), '--config-file',
         path('etc/glance/glance-api.conf'), 'db_sync'], 'glance-manage',
        timeout=300)


def setup_placement():
    run([os.path.join(BIN, 'placement-manage'), '--config-file',
         path('etc/placement/placement.conf'), 'db', 'sync'],
        'placement-manage', timeout=300)


def setup_neutron():
    run([os.path.join(BIN, 'neutron-db-manage'),
         '--config-file', path('etc/neutron/neutron.conf'),
         '--config-file', path('etc/neutron/ml2_conf.ini'),
         'upgrade', 'heads'], 'neutron-db-manage', timeout=600)


def setup_nova():
    nova_manage('api_db', 'sync')
    nova_manage('cell_v2', 'map_cell0', '--database_connection',
                db_url('nova_cell0'))
    nova_manage('cell_v2', 'create_cell', '--name', 'cell1')
    nova_manage('db', 'sync')


def start_nova_services():
    conf = ['--config-file', path('etc/nova/nova.conf')]
    for name in ('nova-conductor', 'nova-scheduler'):
        start(name, [os.path.join(BIN, name)] + conf)
    # Again, just before: a domain made since the first look would stop
    # nova-compute's first start.
    no_foreign_domains()
    start_compute()
    start_wsgi('nova-api', 'nova')


def start_compute(*extra_config_files):
    """Start nova-compute as the user nova; later config files override.

    The e2e tests restart it with a bandwidth limit for a crash test.  Each
    extra file is copied where nova can read it (root:nova 0640).
    """
    cmd = [os.path.join(BIN, 'nova-compute'), '--config-file', COMPUTE_CONF]
    os.makedirs(path('etc', 'nova-compute'), exist_ok=True)
    for i, extra in enumerate(extra_config_files):
        copy = path('etc', 'nova-compute', '%d-%s' % (
            i, os.path.basename(extra)))
        with open(extra) as f:
            install_compute_conf(copy, f.read())
        cmd += ['--config-file', copy]
    uid, gid = compute_ids()
    home = pwd.getpwuid(uid).pw_dir
    env = {'PATH': COMPUTE_PATH,
           'HOME': home if os.path.isdir(home) else path('nova'),
           'USER': COMPUTE_USER, 'LOGNAME': COMPUTE_USER, 'LANG': 'C.UTF-8'}
    # setpriv execs nova-compute itself (no process in between), with
    # nova's uid, gid and groups (libvirt among them) and no capability.
    start('nova-compute', ['setpriv', '--reuid=%d' % uid, '--regid=%d' % gid,
                           '--init-groups', '--inh-caps=-all', '--'] + cmd,
          env=env, cwd=path('nova'))


def map_compute_host():
    """Wait for nova-compute to register, then map it to cell1."""
    deadline = time.monotonic() + HOST_MAP_TIMEOUT
    while True:
        for name in ('nova-compute', 'nova-conductor', 'nova-scheduler'):
            if not pid_of(name):
                raise MinicloudError('%s exited while starting:\n%s'
                                     % (name, log_tail(name)))
            # After a CRITICAL error a nova service may hang on instead of
            # exiting (nova-compute does, refusing to start).
            if critical_in_log(name):
                raise MinicloudError('%s failed to start:\n%s'
                                     % (name, log_tail(name)))
        nova_manage('cell_v2', 'discover_hosts', '--verbose')
        if _host_mapped():
            return
        if time.monotonic() > deadline:
            raise MinicloudError('nova-compute never registered in %ss:\n%s'
                                 % (HOST_MAP_TIMEOUT,
                                    log_tail('nova-compute')))
        time.sleep(2)


def critical_in_log(name):
    with open(path('log', name + '.log'), errors='replace') as f:
        return any(' CRITICAL ' in line for line in f)


def _host_mapped():
    res = subprocess.run(
        [os.path.join(BIN, 'nova-manage'), '--config-file',
         path('etc/nova/nova.conf'), 'cell_v2', 'list_hosts'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        timeout=CALL_TIMEOUT)
    return COMPUTE_HOST in res.stdout


def build_guest_images():
    """The tiny guest: kernel, initramfs and a qcow2 disk, made offline."""
    kernel, initrd = test_guest.build_boot_files(GUEST_CACHE)
    shutil.copy(kernel, path('images', 'vmlinuz'))
    shutil.copy(initrd, path('images', 'initrd.gz'))
    raw = path('images', 'disk.raw')
    with open(raw, 'wb') as f:
        # Recognisable data below the markers region: the image's own.
        f.write(b''.join(b'MINICLOUD BASE IMAGE BLOCK %08d\n' % i
                         for i in range(32 * 1024)).ljust(1024 * 1024, b'.'))
        f.truncate(GUEST_DISK_MIB * 1024 * 1024)
    subprocess.run(['qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
                    path('images', 'disk.qcow2')], check=True,
                   timeout=CALL_TIMEOUT)
    os.unlink(raw)


def openstack(*args, parse=True, timeout=CALL_TIMEOUT):
    """Run the openstack CLI as the cloud's admin; JSON out if parse."""
    cmd = [os.path.join(BIN, 'openstack')] + list(args)
    if parse:
        cmd += ['-f', 'json']
    env = dict(os.environ, OS_CLIENT_CONFIG_FILE=path('clouds.yaml'),
               OS_CLOUD='minicloud')
    try:
        res = subprocess.run(cmd, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        raise MinicloudError('timed out after %ss: %s'
                             % (timeout, ' '.join(cmd)))
    if res.returncode:
        raise MinicloudError('exit %d: %s\n%s' % (
            res.returncode, ' '.join(cmd), res.stderr[-3000:]))
    return json.loads(res.stdout) if parse else res.stdout


def create_flavors_and_images():
    for name, ram, disk, vcpus in FLAVORS:
        openstack('flavor', 'create', '--ram', str(ram), '--disk', str(disk),
                  '--vcpus', str(vcpus), '--public', name)
    kernel = openstack('image', 'create', '--public', '--disk-format', 'aki',
                       '--container-format', 'aki', '--file',
                       path('images', 'vmlinuz'), 'minicloud-kernel')
    ramdisk = openstack('image', 'create', '--public', '--disk-format',
                        'ari', '--container-format', 'ari', '--file',
                        path('images', 'initrd.gz'), 'minicloud-ramdisk')
    for mode in ('idle', 'markers'):
        openstack('image', 'create', '--public', '--disk-format', 'qcow2',
                  '--container-format', 'bare', '--file',
                  path('images', 'disk.qcow2'),
                  '--property', 'kernel_id=%s' % kernel['id'],
                  '--property', 'ramdisk_id=%s' % ramdisk['id'],
                  '--property', 'os_command_line=%s' % (GUEST_CMDLINE % mode),
                  'minicloud-%s' % mode)


# ---------------------------------------------------------------------------
# Commands.

@contextlib.contextmanager
def up_lock():
    os.makedirs(os.path.dirname(STATE), exist_ok=True)
    with open(STATE + '.lock', 'w') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MinicloudError('another "minicloud up" or "down" is '
                                 'running right now (lock %s.lock)' % STATE)
        yield


def running():
    return [s for s in SERVICES if pid_of(s)]


def cmd_up(args):
    with up_lock():
        alive = running()
        if alive:
            names = ', '.join(alive)
            raise MinicloudError(
                'the minicloud is already up (%s running, state in %s); '
                'run "tools/minicloud down" first' % (names, STATE))
        busy = [name for name, port in PORTS.items() if not port_free(port)]
        if busy:
            raise MinicloudError(
                'ports in use by something else: %s; stop it first'
                % ', '.join('%s %d' % (n, PORTS[n]) for n in busy))
        t0 = time.monotonic()
        shutil.rmtree(STATE, ignore_errors=True)
        for sub in ('etc/keystone', 'etc/glance', 'etc/placement',
                    'etc/neutron', 'etc/nova', 'etc/nova-compute', 'log',
                    'run', 'mysql', 'rabbitmq', 'nova/instances', 'neutron',
                    'glance', 'images', 'lock/nova', 'lock/nova-compute'):
            os.makedirs(path(sub))
        # nova-compute (the user nova) needs to get to its own directories.
        os.chmod(STATE, 0o755)
        give_to_compute(path('nova'), path('lock', 'nova-compute'))
        try:
            _up(t0)
        except BaseException:
            log('bring-up failed; stopping what was started (logs stay in '
                '%s/log)', STATE)
            _down()
            raise


def _up(t0):
    info = libvirtd.ensure_running()
    if info.started:
        with open(path('run', 'libvirtd.started'), 'w') as f:
            f.write('started by minicloud up\n')
    log('libvirtd up (%s, QEMU %s)', info.libvirt_version, info.qemu_version)
    if remove_domains():
        log('removed domains left by an earlier minicloud')
    no_foreign_domains()
    configure()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        guest = pool.submit(build_guest_images)
        rabbit = pool.submit(start_rabbitmq)
        start_mysql()
        log('MariaDB up')
        steps = {pool.submit(step): step.__name__ for step in
                 (setup_keystone, setup_glance, setup_placement,
                  setup_neutron, setup_nova)}
        for done in concurrent.futures.as_completed(steps):
            done.result()
            log('%s done', steps[done])
        rabbit.result()
        log('RabbitMQ up')
        guest.result()
    start_wsgi('glance', 'glance')
    start_wsgi('placement', 'placement')
    start_wsgi('neutron', 'neutron')
    start_nova_services()
    for name, probe in (('glance', '/'), ('placement', '/'),
                        ('neutron', '/'), ('nova-api', '/')):
        wait_for(name, lambda: http_answers(url(name, probe)), service=name)
        log('%s answers on %s', name, url(name))
    map_compute_host()
    log('nova-compute (%s) mapped to cell1', COMPUTE_HOST)
    create_flavors_and_images()
    log('flavors %s and images minicloud-idle, minicloud-markers created',
        ', '.join(f[0] for f in FLAVORS))
    log('up in %.0f s; %s', time.monotonic() - t0, env_hint())


def no_foreign_domains():
    """Fail if libvirtd has domains (none of ours is left by now).

    nova-compute would refuse to start: "My hypervisor has existing
    instances, but I appear to be a new service in this database".  On a
    shared development machine other tests may be running guests;
    MINICLOUD_WAIT_FOREIGN=<seconds> waits for a moment without any.
    """
    deadline = time.monotonic() + int(os.environ.get(
        'MINICLOUD_WAIT_FOREIGN', '0'))
    while True:
        try:
            foreign = [name for name, _xml in domains()]
        except _libvirt().libvirtError:
            # Another test may be restarting the shared libvirtd.
            if time.monotonic() > deadline:
                raise
            foreign = ['?']
        if not foreign or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if foreign:
        raise MinicloudError(
            'libvirtd already has domains that are not this cloud\'s: %s. '
            'A new nova-compute refuses to start beside them; remove them '
            '(virsh destroy/undefine) or wait for whatever made them to end'
            % ', '.join(sorted(foreign)))


def env_hint():
    return ('export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=minicloud'
            % path('clouds.yaml'))


def _libvirt():
    """The libvirt module, its errors raised but not printed on stderr."""
    import libvirt
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    return libvirt


def domains():
    """(name, XML) of every domain libvirtd knows."""
    libvirt = _libvirt()
    conn = libvirt.open(libvirtd.URI)
    found = []
    with contextlib.closing(conn):
        for dom in conn.listAllDomains():
            # One may go away between the listing and the look (libvirtd
            # is shared with other tests).
            with contextlib.suppress(libvirt.libvirtError):
                found.append((dom.name(), dom.XMLDesc(0)))
    return found


def remove_domains():
    """Destroy and undefine the domains whose disks live under STATE."""
    libvirt = _libvirt()
    try:
        conn = libvirt.open(libvirtd.URI)
    except libvirt.libvirtError:
        return 0
    removed = 0
    instances = path('nova', 'instances') + os.sep
    with contextlib.closing(conn):
        for dom in conn.listAllDomains():
            try:
                if instances not in dom.XMLDesc(0):
                    continue
            except libvirt.libvirtError:  # gone meanwhile
                continue
            with contextlib.suppress(libvirt.libvirtError):
                if dom.isActive():
                    dom.destroy()
            with contextlib.suppress(libvirt.libvirtError):
                dom.undefineFlags(
                    libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA |
                    libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            removed += 1
    return removed


def _down():
    # The OpenStack services together, then the bus and the database.
    stopped = stop(*SERVICES[:SERVICES.index('rabbitmq')])
    if stopped:
        log('stopped %s', ', '.join(stopped))
    stop_rabbitmq()
    if stop('mysql'):
        log('stopped rabbitmq, mysql')
    removed = remove_domains()
    if removed:
        log('removed %d domain(s) of the minicloud', removed)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(COMPUTE_CONF)
    for pid, cmdline in stray_processes():
        # Something that left its service's process group (a daemonised
        # helper): nothing of the cloud may outlive "down".
        log('killing stray process %d: %s', pid, cmdline[:200])
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if os.path.exists(path('run', 'libvirtd.started')):
        try:
            others = [name for name, _xml in domains()]
        except _libvirt().libvirtError:
            others = []
        if others:
            # Someone else uses it now (libvirtd is shared with other test
            # runs): not ours to stop.
            log('libvirtd left running (minicloud up had started it, but '
                'it now has domains that are not the cloud\'s: %s)',
                ', '.join(sorted(others)))
        else:
            libvirtd.stop()
            log('libvirtd stopped (minicloud up had started it)')
        os.unlink(path('run', 'libvirtd.started'))


def _ancestors():
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            with open('/proc/%d/stat' % pid) as f:
                pid = int(f.read().rsplit(')', 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def stray_processes():
    """Processes that run the cloud's code or use its state directory.

    Returns (pid, command line) pairs; this process and its parents are
    left out.
    """
    marks = (STATE + os.sep, os.path.join(VENV, 'bin') + os.sep,
             COMPUTE_CONF)
    mine = _ancestors()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) in mine:
            continue
        try:
            with open('/proc/%s/cmdline' % entry, 'rb') as f:
                cmdline = f.read().replace(b'\0', b' ').decode(
                    'utf-8', 'replace').strip()
        except OSError:
            continue
        if any(mark in cmdline for mark in marks):
            found.append((int(entry), cmdline))
    return found


def leftovers():
    """What of the cloud still runs: services, processes, domains."""
    out = ['service %s (pid %d)' % (s, pid_of(s)) for s in running()]
    out += ['process %d: %s' % (pid, cmd[:150])
            for pid, cmd in stray_processes()]
    if os.path.exists(COMPUTE_CONF):
        out.append('file %s' % COMPUTE_CONF)
    with contextlib.suppress(Exception):
        out += ['domain %s' % name for name, xml in domains()
                if path('nova', 'instances') + os.sep in xml]
    return out


def cmd_down(args):
    if not os.path.isdir(STATE):
        log('nothing to stop (no %s)', STATE)
        return
    with up_lock():
        _down()
    left = leftovers()
    if left:
        raise MinicloudError('still running after down:\n  '
                             + '\n  '.join(left))
    log('down: no process or domain of the cloud is left; logs stay in '
        '%s/log', STATE)


def cmd_status(args):
    alive = running()
    for name in SERVICES:
        pid = pid_of(name)
        where = (url(name) if name in PORTS and name not in
                 ('mysql', 'rabbitmq') else '')
        print('%-15s %-8s %s' % (name, 'pid %d' % pid if pid else 'stopped',
                                 where))
    print('state: %s' % STATE)
    if alive:
        print(env_hint())
    # Exit status: 0 all up, 3 all down, 1 partly up (like LSB status).
    if len(alive) == len(SERVICES):
        return 0
    return 3 if not alive else 1


TEMPEST_VENV = os.path.join(REPO, '.tox', 'tempest-list')
TEMPEST_REGEX = r'^(tempest\.api\.compute\.images\.|nova_snapdriver\.)'
TEMPEST_CONF = """\
[DEFAULT]
log_dir = {state}/log
log_file = tempest-run.log
[auth]
admin_username = admin
admin_password = {admin_password}
admin_project_name = admin
admin_domain_name = Default
use_dynamic_credentials = True
create_isolated_networks = False
[identity]
uri_v3 = {keystone}/v3
auth_version = v3
region = {region}
[identity-feature-enabled]
api_v2 = False
[compute]
image_ref = {image}
image_ref_alt = {image}
flavor_ref = {flavor}
flavor_ref_alt = {flavor_alt}
max_microversion = latest
build_timeout = 180
[compute-feature-enabled]
snapshot = True
pause = True
suspend = True
shelve = True
console_output = False
change_password = False
[service_available]
nova = True
glance = True
neutron = True
cinder = False
swift = False
[validation]
run_validation = False
[image-feature-enabled]
api_v2 = True
[snapdriver_feature_enabled]
live_snapshot = True
paused_snapshot = True
stopped_snapshot = True
boot_from_snapshot = True
"""


def cmd_tempest(args):
    """Run tempest's compute image tests and our plugin's on the cloud."""
    if running() != list(SERVICES):
        raise MinicloudError('the minicloud is not (fully) up; run '
                             '"tools/minicloud up" first')
    # Creates the venv (tempest 47 + this checkout, no nova) if needed and
    # checks that tempest lists our plugin's tests.
    res = subprocess.run([os.path.join(REPO, 'tools', 'check-tempest-plugin'),
                          TEMPEST_VENV], stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True,
                         timeout=600)
    if res.returncode:
        raise MinicloudError('tools/check-tempest-plugin failed:\n%s'
                             % res.stdout[-3000:])
    work = path('tempest')
    for d in (work, path('tempest-etc')):
        shutil.rmtree(d, ignore_errors=True)
    os.makedirs(path('tempest-etc'))
    tempest = os.path.join(TEMPEST_VENV, 'bin', 'tempest')
    env = dict(os.environ, PATH=os.path.join(TEMPEST_VENV, 'bin') + ':' +
               os.environ['PATH'])
    run([tempest, 'init', '--config-dir', path('tempest-etc'),
         '--workspace-path', path('tempest-workspace.yaml'), work],
        'tempest', env=env)
    ids = {f['Name']: f['ID'] for f in openstack('flavor', 'list')}
    image = openstack('image', 'show', 'minicloud-idle')['id']
    with open(os.path.join(work, 'etc', 'tempest.conf'), 'w') as f:
        f.write(TEMPEST_CONF.format(
            state=STATE, admin_password=ADMIN_PASSWORD,
            keystone=url('keystone'), region=REGION, image=image,
            flavor=ids[FLAVORS[0][0]], flavor_alt=ids[FLAVORS[1][0]]))
    cmd = [tempest, 'run', '--concurrency', str(args.concurrency),
           '--regex', args.regex]
    log('running %s', ' '.join(cmd))
    t0 = time.monotonic()
    with open(path('log', 'tempest.log'), 'w') as out:
        proc = subprocess.run(cmd, cwd=work, env=env, stdout=out,
                              stderr=subprocess.STDOUT,
                              timeout=args.timeout)
    with open(path('log', 'tempest.log')) as f:
        output = f.read()
    for line in output.splitlines():
        if ('... SKIPPED' in line or '... FAILED' in line
                or line.startswith((' - Passed', ' - Skipped', ' - Failed',
                                    ' - Unexpected', ' - Expected'))):
            print(line)
    log('tempest exited %d after %.0f s (full output: %s)',
        proc.returncode, time.monotonic() - t0, path('log', 'tempest.log'))
    if proc.returncode:
        print(output[-6000:])
        return proc.returncode
    unexplained = unexplained_skips(output)
    if unexplained:
        print('minicloud: %d skipped test(s) not explained in %s:\n  %s'
              % (len(unexplained), TEMPEST_SKIPS, '\n  '.join(unexplained)))
        return 1
    return 0


TEMPEST_SKIPS = os.path.join(REPO, 'tests', 'e2e', 'tempest-skips.txt')


def unexplained_skips(output):
    """Skipped tests of a tempest run that tempest-skips.txt lacks."""
    with open(TEMPEST_SKIPS) as f:
        allowed = {line.split()[0] for line in f
                   if line.strip() and not line.startswith('#')}
    skipped = re.findall(r'^\{\d+\} (\S+?)(?:\[\S*\])? \.\.\. SKIPPED',
                         output, re.M)
    return sorted(set(skipped) - allowed)


def cmd_env(args):
    print(env_hint())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/minicloud',
        description='A one-machine OpenStack running nova-snapdriver.')
    sub = parser.add_subparsers(dest='command', required=True)
    for name, func in (('up', cmd_up), ('down', cmd_down),
                       ('status', cmd_status), ('env', cmd_env)):
        sub.add_parser(name).set_defaults(func=func)
    tempest = sub.add_parser(
        'tempest', help='run tempest 47 against the cloud: '
        'tempest.api.compute.images and our plugin')
    tempest.add_argument('--regex', default=TEMPEST_REGEX)
    tempest.add_argument('--concurrency', type=int, default=2)
    tempest.add_argument('--timeout', type=int, default=1800)
    tempest.set_defaults(func=cmd_tempest)
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print('minicloud: must run as root (it starts libvirtd, the '
              'services, and nova-compute as the user nova)',
              file=sys.stderr)
        return 2
    # Whatever the caller's umask: nova must read what it is given.
    os.umask(0o022)
    try:
        return args.func(args) or 0
    except MinicloudError as e:
        print('minicloud: error: %s' % e, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
