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

"""The cloud's services: setting each up and starting it.

MariaDB and RabbitMQ from Debian, started by hand (there is no systemd);
keystone (with the service users and the catalog), Glance, placement,
neutron and nova-api under gunicorn through tools/minicloud/minicloud_wsgi.py;
nova-conductor, nova-scheduler and nova-compute (as the user nova, through
setpriv) from their console scripts; mapping the compute host to cell1;
and the ``openstack`` CLI as the cloud's admin.
"""

import contextlib
import json
import os
import pwd
import subprocess
import sys
import time

from minicloud_lib.config import ADMIN_PASSWORD
from minicloud_lib.config import BIN
from minicloud_lib.config import CALL_TIMEOUT
from minicloud_lib.config import COMPUTE_CONF
from minicloud_lib.config import COMPUTE_HOST
from minicloud_lib.config import compute_ids
from minicloud_lib.config import COMPUTE_PATH
from minicloud_lib.config import COMPUTE_USER
from minicloud_lib.config import db_url
from minicloud_lib.config import HOST
from minicloud_lib.config import HOST_MAP_TIMEOUT
from minicloud_lib.config import install_compute_conf
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import path
from minicloud_lib.config import PORTS
from minicloud_lib.config import REGION
from minicloud_lib.config import SERVICE_PASSWORD
from minicloud_lib.config import url
from minicloud_lib.domains import no_foreign_domains
from minicloud_lib import neutron_conf
from minicloud_lib.processes import critical_in_log
from minicloud_lib.processes import http_answers
from minicloud_lib.processes import log_tail
from minicloud_lib.processes import pid_of
from minicloud_lib.processes import port_open
from minicloud_lib.processes import run
from minicloud_lib.processes import start
from minicloud_lib.processes import stop
from minicloud_lib.processes import wait_for
from minicloud_lib import REPO


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


def service_env(app):
    """The environment of one WSGI app (minicloud_wsgi.py's names)."""
    env = dict(os.environ)
    env['MINICLOUD_APP'] = app
    # nova-metadata is nova's second application, on nova's configuration.
    service = 'nova' if app == 'nova-metadata' else app
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
        '--pythonpath', os.path.join(REPO, 'tools', 'minicloud'),
        'minicloud_wsgi:application'], env=service_env(app))


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


RPC_QUEUES = ('q-plugin', 'q-reports-plugin')


def _rpc_consuming():
    """Whether neutron's RPC server consumes the queues agents call."""
    res = subprocess.run(
        [os.path.join(RABBITMQ_BIN, 'rabbitmqctl'), 'list_queues', '-q',
         'name', 'consumers'], stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, env=rabbit_env(),
        timeout=CALL_TIMEOUT)
    consumers = dict(line.split()[:2] for line in res.stdout.splitlines()
                     if len(line.split()) >= 2)
    return all(consumers.get(q, '0') != '0' for q in RPC_QUEUES)


def start_network_services():
    """neutron's RPC server, then its ovs, dhcp and metadata agents.

    They run as root (network namespaces, OVS ports, dnsmasq) in their
    own process groups; dnsmasq and haproxy, which the dhcp agent starts,
    leave them (``down`` finds those by their state paths).  The agents
    start once the RPC server consumes its queues: an agent's first state
    report sent before is dropped, and it waits a minute for the answer.
    """
    conf = neutron_conf.agent_config_files
    start('neutron-rpc', [
        sys.executable, os.path.join(REPO, 'tools', 'minicloud',
                                     'minicloud_neutron_rpc.py'),
        '--config-file', path('etc', 'neutron', 'neutron.conf'),
        '--config-file', path('etc', 'neutron', 'ml2_conf.ini')])
    wait_for('neutron\'s RPC server', _rpc_consuming, service='neutron-rpc')
    for agent in ('openvswitch', 'dhcp', 'metadata'):
        start('neutron-%s-agent' % agent,
              [os.path.join(BIN, 'neutron-%s-agent' % agent)] + conf(agent))


def start_nova_services():
    conf = ['--config-file', path('etc/nova/nova.conf')]
    for name in ('nova-conductor', 'nova-scheduler'):
        start(name, [os.path.join(BIN, name)] + conf)
    # Again, just before: a domain made since the first look would stop
    # nova-compute's first start.
    no_foreign_domains()
    start_compute()
    start_wsgi('nova-api', 'nova')
    start_wsgi('nova-metadata', 'nova-metadata')


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


def _host_mapped():
    res = subprocess.run(
        [os.path.join(BIN, 'nova-manage'), '--config-file',
         path('etc/nova/nova.conf'), 'cell_v2', 'list_hosts'],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        timeout=CALL_TIMEOUT)
    return COMPUTE_HOST in res.stdout


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
