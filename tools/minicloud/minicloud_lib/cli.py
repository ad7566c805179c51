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

"""The commands: ``up``, ``down``, ``status``, ``env`` and ``tempest``.

``up`` (one at a time, under a lock) brings the whole stack up and stops
what it started if a step fails; ``down`` stops everything, removes the
cloud's domains and nova-compute's config file, and fails if anything of
the cloud is left; ``main`` parses the command line for
tools/minicloud/minicloud.
"""

import argparse
import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import signal
import sys
import time

from minicloud_lib.config import COMPUTE_CONF
from minicloud_lib.config import COMPUTE_HOST
from minicloud_lib.config import configure
from minicloud_lib.config import FLAVORS
from minicloud_lib.config import give_to_compute
from minicloud_lib.config import GUEST_NETS
from minicloud_lib.config import log
from minicloud_lib.config import MinicloudError
from minicloud_lib.config import NETNS_EXT
from minicloud_lib.config import NETWORK_SERVICES
from minicloud_lib.config import path
from minicloud_lib.config import PORTS
from minicloud_lib.config import SERVICES
from minicloud_lib.config import STATE
from minicloud_lib.config import url
from minicloud_lib.domains import _libvirt
from minicloud_lib.domains import domains
from minicloud_lib.domains import no_foreign_domains
from minicloud_lib.domains import remove_domains
from minicloud_lib import guestnet
from minicloud_lib.images import build_guest_images
from minicloud_lib.images import create_flavors_and_images
from minicloud_lib.images import IMAGES
from minicloud_lib.methods import cmd_methods
from minicloud_lib import neutron_conf
from minicloud_lib.processes import http_answers
from minicloud_lib.processes import pid_of
from minicloud_lib.processes import port_free
from minicloud_lib.processes import running
from minicloud_lib.processes import stop
from minicloud_lib.processes import stray_processes
from minicloud_lib.processes import wait_for
from minicloud_lib.services import map_compute_host
from minicloud_lib.services import openstack
from minicloud_lib.services import setup_glance
from minicloud_lib.services import setup_keystone
from minicloud_lib.services import setup_neutron
from minicloud_lib.services import setup_nova
from minicloud_lib.services import setup_placement
from minicloud_lib.services import start_mysql
from minicloud_lib.services import start_network_services
from minicloud_lib.services import start_nova_services
from minicloud_lib.services import start_rabbitmq
from minicloud_lib.services import start_wsgi
from minicloud_lib.services import stop_rabbitmq
from minicloud_lib.tempest import cmd_tempest
from minicloud_lib.tempest import TEMPEST_REGEX
from tests.testbed import libvirtd


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


def cmd_up(args):
    with up_lock():
        alive = running()
        if alive:
            names = ', '.join(alive)
            raise MinicloudError(
                'the minicloud is already up (%s running, state in %s); '
                'run "tools/minicloud/minicloud down" first' % (names, STATE))
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
                    'glance', 'images', 'lock/nova', 'lock/nova-compute',
                    'lock/neutron'):
            os.makedirs(path(sub))
        # nova-compute (the user nova) needs to get to its own directories.
        os.chmod(STATE, 0o755)
        give_to_compute(path('nova'), path('lock', 'nova-compute'))
        try:
            _up(t0)
        except BaseException:
            log('bring-up failed; stopping what was started (logs stay in '
                '%s/log)', STATE)
            try:
                _down()
            except MinicloudError as e:
                log('%s', e)   # the bring-up's own error is the one raised
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
    # Before anything of the network exists: the proof that the root
    # namespace never gets an address or route in a guest network.
    guestnet.start_watch()
    configure()
    neutron_conf.write_all()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        guest = pool.submit(build_guest_images)
        rabbit = pool.submit(start_rabbitmq)
        switch = pool.submit(guestnet.start_switch)
        start_mysql()
        log('MariaDB up')
        steps = {pool.submit(step): step.__name__ for step in
                 (setup_keystone, setup_glance, setup_placement,
                  setup_neutron, setup_nova)}
        agents = None
        for done in concurrent.futures.as_completed(steps):
            done.result()
            log('%s done', steps[done])
            if steps[done] == 'setup_neutron':
                # The agents take a while to start: they start now, beside
                # the rest of the set-up.
                rabbit.result()
                switch.result()
                log('RabbitMQ up; Open vSwitch up (userspace datapath), '
                    '%s joined to br-ex', NETNS_EXT)
                agents = pool.submit(start_network_services)
        guest.result()
        start_wsgi('glance', 'glance')
        start_wsgi('placement', 'placement')
        start_wsgi('neutron', 'neutron')
        agents.result()
        log('neutron\'s RPC server and agents started')
    start_nova_services()
    guestnet.start_forwarder()
    for name, probe in (('glance', '/'), ('placement', '/'),
                        ('neutron', '/'), ('nova-api', '/'),
                        ('nova-metadata', '/')):
        wait_for(name, lambda: http_answers(url(name, probe)), service=name)
        log('%s answers on %s', name, url(name))
    map_compute_host()
    log('nova-compute (%s) mapped to cell1', COMPUTE_HOST)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        network = pool.submit(guestnet.create_provider_network, openstack)
        create_flavors_and_images()
        log('flavors %s and images %s created',
            ', '.join(f[0] for f in FLAVORS), ', '.join(IMAGES))
        network.result()
    log('up in %.0f s; %s', time.monotonic() - t0, env_hint())


def env_hint():
    return ('export OS_CLIENT_CONFIG_FILE=%s OS_CLOUD=minicloud'
            % path('clouds.yaml'))


def _down():
    """Stop everything; each step runs whatever happened to the one before.

    The OpenStack services and neutron's agents together; then the
    domains, while Open vSwitch still runs (libvirt unplugs their taps
    through it); then the network, the bus and the database; netwatch
    last.  Raises MinicloudError naming what failed, at the end.
    """
    errors = []

    def step(what, func, *args):
        try:
            return func(*args)
        except Exception as e:
            errors.append('%s: %s' % (what, e))
            log('%s failed: %s', what, e)
    try:
        stopped = step('stopping the services', stop,
                       *SERVICES[:SERVICES.index(NETWORK_SERVICES[0])])
        if stopped:
            log('stopped %s', ', '.join(stopped))
        removed = step('removing the domains', remove_domains)
        if removed:
            log('removed %d domain(s) of the minicloud', removed)
        network_errors = guestnet.teardown()
        for error in network_errors:
            log('network teardown: %s', error)
        errors += network_errors
        step('stopping RabbitMQ', stop_rabbitmq)
        if step('stopping MariaDB', stop, 'mysql'):
            log('stopped Open vSwitch, RabbitMQ, MariaDB')
        with contextlib.suppress(FileNotFoundError):
            os.unlink(COMPUTE_CONF)
        for pid, cmdline in stray_processes():
            # Something that left its service's process group (a
            # daemonised helper): nothing of the cloud may outlive "down".
            log('killing stray process %d: %s', pid, cmdline[:200])
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        step('stopping libvirtd', _stop_libvirtd_if_ours)
    finally:
        guestnet.stop_watch()
    if errors:
        raise MinicloudError('down did not finish cleanly:\n  '
                             + '\n  '.join(errors))


def _stop_libvirtd_if_ours():
    if not os.path.exists(path('run', 'libvirtd.started')):
        return
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
    left = leftovers() + guestnet.check()
    if left:
        raise MinicloudError('still running after down:\n  '
                             + '\n  '.join(left))
    log('down: no process, domain, namespace or link of the cloud is left, '
        'and the root namespace never had an address or route in %s; '
        'logs stay in %s/log', ', '.join(GUEST_NETS), STATE)


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


def cmd_env(args):
    print(env_hint())


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/minicloud/minicloud',
        description='A one-machine OpenStack running nova-snapdriver.')
    sub = parser.add_subparsers(dest='command', required=True)
    for name, func in (('up', cmd_up), ('down', cmd_down),
                       ('status', cmd_status), ('env', cmd_env)):
        sub.add_parser(name).set_defaults(func=func)
    sub.add_parser(
        'methods', help='check that every live snapshot in nova-compute\'s '
        'log ran the capture method it was configured with').set_defaults(
            func=cmd_methods)
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
