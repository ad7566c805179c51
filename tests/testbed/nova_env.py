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

"""nova configured the way nova-compute configures itself, in one process.

``configure()`` writes a nova.conf (instances path, ``[libvirt]``,
``[glance] endpoint_override`` to the test Glance, privsep usable as root)
and parses it with ``nova.config.parse_args``, as nova-compute does at start.
oslo.config's CONF is global: configure once per process.
"""

import inspect
import os
import sys

# nova.tests sets up nova's own monkey patching and must come first.
import nova.tests  # noqa: F401,I100

from nova import config as nova_config  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
from nova.virt import driver as virt_driver  # noqa: E402
from nova.virt import virtapi  # noqa: E402
from oslo_config import cfg  # noqa: E402

CONF = cfg.CONF

DRIVER_NAME = 'snapdriver.SnapLibvirtDriver'
PROJECT_ID = 'a2f4a5e1b53a4d2da7a8c7e2d3b1a001'
USER_ID = 'b6e7f8a9c0d14e2fa3b4c5d6e7f8a002'

_configured = None
_started = []


def write_conf(workdir, glance_url, virt_type='qemu', extra=None):
    """Write nova.conf for the test compute host; return its path."""
    instances = os.path.join(workdir, 'instances')
    os.makedirs(instances, exist_ok=True)
    bindir = os.path.dirname(sys.executable)
    sections = {
        'DEFAULT': {
            'state_path': workdir,
            'instances_path': instances,
            'compute_driver': DRIVER_NAME,
            'use_stderr': 'false',
            'debug': 'true',
            'log_file': os.path.join(workdir, 'nova-compute.log'),
            # nova's notifier must exist (Host.get_connection notifies on
            # a failed connect, e.g. while libvirtd restarts); nothing
            # listens, and the fake transport sends nothing anywhere.
            'transport_url': 'fake:/',
        },
        'oslo_messaging_notifications': {'driver': 'noop'},
        'libvirt': {
            'virt_type': virt_type,
            'images_type': 'qcow2',
            'snapshots_directory': os.path.join(instances, 'snapshots'),
        },
        'glance': {
            'endpoint_override': glance_url,
            'num_retries': '0',
        },
        # No sudo here: as root, privsep's helper can be run directly.
        'nova_sys_admin': {
            'helper_command': os.path.join(bindir, 'privsep-helper'),
        },
        'snapdriver': {
            # nova's own sequence, named: the tests of every other method
            # set theirs.  The default (auto) is what the minicloud runs.
            'capture_method': 'rebase',
            'block_job_poll_interval': '0.1',
            'progress_log_interval': '1',
            'reserved_space_mb': '0',
            # No periodic recovery in the test process: the crash tests run
            # "nova-snapdriver-manage recover" on a killed child's snapshot
            # themselves, and a periodic run (every 300 s by default) that
            # fell between the kill and theirs repaired it first.
            'recovery_interval': '0',
        },
        'oslo_concurrency': {'lock_path': os.path.join(workdir, 'locks')},
        # Recovery talks to Glance as nova's service user; the test Glance
        # has no keystone, so that user needs no credentials.
        'service_user': {'auth_type': 'none'},
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    path = os.path.join(workdir, 'nova.conf')
    with open(path, 'w') as f:
        for section, values in sections.items():
            f.write('[%s]\n' % section)
            for key, value in values.items():
                f.write('%s = %s\n' % (key, value))
            f.write('\n')
    return path


def configure(workdir, glance_url, virt_type='qemu', extra=None):
    """Write nova.conf and parse it as nova-compute does; once per process."""
    if _configured is not None:
        return _configured
    return configure_from(write_conf(workdir, glance_url, virt_type, extra))


def configure_from(path):
    """Parse an existing nova.conf (a child process shares the parent's)."""
    global _configured
    nova_config.parse_args(['nova-compute', '--config-file', path],
                           configure_db=False)
    objects.register_all()
    import nova_snapdriver.conf  # noqa: F401  registers [snapdriver]
    _configured = path
    return path


def load_driver(name=DRIVER_NAME, host='localhost'):
    """Load a driver by name and start it, as nova-compute does."""
    driver = virt_driver.load_compute_driver(virtapi.VirtAPI(), name)
    _no_instance_list_from_the_database(driver)
    driver.init_host(host=host)
    _started.append((driver, host))
    return driver


def _no_instance_list_from_the_database(driver):
    """The test bed has no database: nova 31 to 33 read one in init_host.

    Their ``init_host`` lists this host's instances from nova's database
    (``InstanceList.get_by_host``, through the conductor in nova-compute)
    to register image properties in them.  There is no database here, and
    no instance in one: the list is empty.  nova 34 is handed the
    instances instead (an argument), and is left as it is.
    """
    register = getattr(driver, '_register_all_undefined_instance_details',
                       None)
    if register is not None and not inspect.signature(register).parameters:
        driver._register_all_undefined_instance_details = lambda: None


def shutdown():
    """Stop what init_host started, as nova-compute does when it stops.

    init_host starts libvirt's event threads and nova's thread pools; left
    running, they keep the Python process from exiting.
    """
    while _started:
        driver, host = _started.pop()
        driver.cleanup_host(host=host)
        # nova's Host.cleanup leaves its connection-event loop running (see
        # its to-do note); a handler that raises SystemExit ends that loop.
        driver._host._conn_event_handler_queue.put(_end_event_loop)
    try:
        from nova import thread_pool_factory  # nova 34
    except ImportError:
        return
    thread_pool_factory.shutdown_all_executors()


def _end_event_loop():
    raise SystemExit()


def load_intree_driver():
    """nova's own LibvirtDriver, to compare against."""
    return load_driver('libvirt.LibvirtDriver')


def admin_context():
    """A request context nova's Glance client accepts without keystone."""
    return nova_context.RequestContext(
        user_id=USER_ID, project_id=PROJECT_ID, is_admin=True,
        auth_token='snapdriver-test-token')
