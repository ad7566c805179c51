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

"""End-to-end checks against the real one-machine cloud of
tools/minicloud/minicloud.

These tests drive the cloud only the way a user does, through the
``openstack`` CLI (every call with a timeout), and then look at what a
user or an operator would see: the server's status and task state, the
image's status, properties and bytes, the libvirt domain, and the files
left on the compute host.  They run in the minicloud's venv:

    tools/minicloud/minicloud up
    /var/tmp/nova-snapdriver-minicloud-venv/bin/python -m pytest tests/e2e
    tools/minicloud/minicloud down

(tools/minicloud/minicloud-checks does all three.)  The tests run as root; the
cloud's nova-compute runs as the user nova.

A cloud that is not up fails the run; nothing here skips.
"""

import contextlib
import os
import re
import sys
import time

import libvirt
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
# The cloud's own script: its state directory, CLI wrapper and services.
sys.path.insert(0, os.path.join(REPO, 'tools', 'minicloud'))
import minicloud  # noqa: E402

STATE = minicloud.STATE
CLIError = minicloud.MinicloudError
openstack = minicloud.openstack
CALL_TIMEOUT = minicloud.CALL_TIMEOUT   # one CLI call
WAIT_TIMEOUT = 300   # a CLI call with --wait, or a status to be reached
MARKERS_IMAGE = 'minicloud-markers'
FLAVOR = 'mc.tiny'


def domain_info(name):
    """(persistent, state, block job on vda) of a libvirt domain.

    A domain that is not running has no block job to ask about: {}.
    """
    conn = libvirt.open('qemu:///system')
    with contextlib.closing(conn):
        dom = conn.lookupByName(name)
        job = dom.blockJobInfo('vda', 0) if dom.isActive() else {}
        return bool(dom.isPersistent()), dom.state()[0], job


_sdk = []


def sdk():
    """An openstacksdk connection, for polling.

    One CLI call costs about 2 s of Python start-up; an SDK call a few
    milliseconds.  What a test checks still goes through the CLI.
    """
    if not _sdk:
        import openstack as openstacksdk
        os.environ['OS_CLIENT_CONFIG_FILE'] = os.path.join(STATE,
                                                           'clouds.yaml')
        _sdk.append(openstacksdk.connect(cloud='minicloud'))
    return _sdk[0]


def console_marks(server_id):
    """The highest k the guest reported with "MARK k" on its console."""
    log = sdk().compute.get_server_console_output(server_id)['output']
    marks = re.findall(r'^MARK (\d+)\r?$', log, re.M)
    return max(map(int, marks), default=0), log


def wait_for(what, check, timeout=WAIT_TIMEOUT, interval=0.5):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError('%s: not after %ss' % (what, timeout))
        time.sleep(interval)


def wait_for_status(server_id, status):
    """Wait for status with no task state; return ``server show``."""
    def check():
        server = sdk().compute.get_server(server_id)
        if server.status == 'ERROR':
            raise AssertionError('server %s went to ERROR: %s'
                                 % (server_id, server.fault))
        return server.status == status and not server.task_state
    wait_for('server %s %s' % (server_id, status), check)
    return openstack('server', 'show', server_id)


@pytest.fixture(scope='session', autouse=True)
def cloud():
    """The minicloud must be up: a cloud that is down fails, never skips."""
    down = set(minicloud.SERVICES) - set(minicloud.running())
    if down:
        pytest.fail('the minicloud is not up (run '
                    '"tools/minicloud/minicloud up"); '
                    'not running: %s' % ', '.join(sorted(down)),
                    pytrace=False)


class Cloud(object):
    """Servers and images made by one test, deleted after it."""

    def __init__(self):
        self.servers = []
        self.images = []

    def boot(self, name, image=MARKERS_IMAGE, min_marks=0):
        server = openstack('server', 'create', '--flavor', FLAVOR,
                           '--image', image, '--nic', 'none', '--wait',
                           name, timeout=WAIT_TIMEOUT)
        self.servers.append(server['id'])
        assert server['status'] == 'ACTIVE', server
        if min_marks:
            wait_for('%d markers written by %s' % (min_marks, name),
                     lambda: console_marks(server['id'])[0] >= min_marks)
        return server

    def snapshot(self, server_id, name):
        image = openstack('server', 'image', 'create', '--wait', '--name',
                          name, server_id, timeout=WAIT_TIMEOUT)
        self.images.append(image['id'])
        return image

    def cleanup(self):
        for server_id in self.servers:
            try:
                openstack('server', 'delete', '--wait', server_id,
                          parse=False, timeout=WAIT_TIMEOUT)
            except CLIError as e:
                print('cleanup: %s' % e)
        for image_id in self.images:
            try:
                openstack('image', 'delete', image_id, parse=False)
            except CLIError as e:
                print('cleanup: %s' % e)


@pytest.fixture
def resources():
    made = Cloud()
    yield made
    made.cleanup()
