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

"""createImage against a cloud whose compute hosts run nova-snapdriver.

Each test snapshots a server in one power state and checks what a user of
the API sees: the image becomes active with the properties nova gives a
snapshot (``image_type=snapshot``, ``instance_uuid``, ``min_ram`` and
``min_disk`` from the base image and the flavor, the caller's metadata),
the server is back in its state with no task in progress, and a server
boots from the image.  With SSH validation on, a guest writes to its disk
during a live snapshot and a server booted from the image must hold what
was written, whole.

Images are read from Glance (``images_client``), whatever compute
microversion the run requests.
"""

from tempest.api.compute import base
from tempest import config
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils.linux import remote_client
from tempest.lib.common.utils import test_utils
from tempest.lib import decorators
from tempest.lib import exceptions as lib_exc
import testtools

CONF = config.CONF

# The guest's writes during the live snapshot: one line per write, each
# synced, numbered from 1.  A point-in-time image holds lines 1..K.
MARKER_FILE = 'snapdriver-marker'
TICKS_FILE = 'snapdriver-ticks'
WRITER = ("nohup sh -c 'i=0; while [ $i -lt 600 ]; do i=$((i+1)); "
          "echo $i >> %s; sync; sleep 0.1; done' >/dev/null 2>&1 &"
          % TICKS_FILE)


class SnapdriverSnapshotTest(base.BaseV2ComputeTest):
    """Snapshots of servers in each power state; servers booted from them."""

    create_default_network = True

    @classmethod
    def skip_checks(cls):
        super(SnapdriverSnapshotTest, cls).skip_checks()
        if not CONF.service_available.glance:
            raise cls.skipException('%s skipped as glance is not available'
                                    % cls.__name__)
        if not CONF.compute_feature_enabled.snapshot:
            raise cls.skipException('%s skipped as instance snapshotting is '
                                    'not supported' % cls.__name__)

    @classmethod
    def setup_credentials(cls):
        cls.prepare_instance_network()
        super(SnapdriverSnapshotTest, cls).setup_credentials()

    @classmethod
    def resource_setup(cls):
        super(SnapdriverSnapshotTest, cls).resource_setup()
        cls.base_image = cls.images_client.show_image(cls.image_ref)
        cls.flavor = cls.flavors_client.show_flavor(cls.flavor_ref)['flavor']

    def _wait_for_server(self, server_id, status):
        """Wait until the server is in ``status`` with no task running."""
        def settled():
            server = self.servers_client.show_server(server_id)['server']
            if server['status'] == 'ERROR':
                raise lib_exc.TempestException(
                    'Server %s went to ERROR: %s'
                    % (server_id, server.get('fault')))
            return (server['status'] == status and
                    server.get('OS-EXT-STS:task_state') is None)

        if not test_utils.call_until_true(settled, self.build_timeout,
                                          self.build_interval):
            server = self.servers_client.show_server(server_id)['server']
            raise lib_exc.TimeoutException(
                'Server %s did not settle in %s within %ss: status %s, '
                'task_state %s' % (server_id, status, self.build_timeout,
                                   server['status'],
                                   server.get('OS-EXT-STS:task_state')))
        return self.servers_client.show_server(server_id)['server']

    def _snapshot(self, server, status):
        """Snapshot ``server``; wait for the image and the server."""
        name = data_utils.rand_name(prefix=CONF.resource_name_prefix,
                                    name='snapdriver-snap')
        image = self.create_image_from_server(
            server['id'], name=name, metadata={'snapdriver_test': name},
            wait_until='ACTIVE', wait_for_server=False)
        self._wait_for_server(server['id'], status)
        # Before 2.36 the image came from nova's image proxy: read Glance's.
        return self.images_client.show_image(image['id'])

    def _assert_snapshot_of(self, image, server):
        """The image holds what nova promises of a snapshot of ``server``."""
        self.assertEqual('active', image['status'])
        self.assertEqual('snapshot', image['image_type'])
        self.assertEqual(server['id'], image['instance_uuid'])
        self.assertEqual(image['name'], image['snapdriver_test'])
        self.assertGreater(image['size'], 0)
        self.assertIn(image['disk_format'], ('raw', 'qcow2'))
        self.assertEqual(self.base_image['min_ram'], image['min_ram'])
        # nova raises min_disk to the flavor's root disk size.
        self.assertEqual(max(self.base_image['min_disk'],
                             self.flavor['disk']),
                         image['min_disk'])

    def _ssh(self, server, validation_resources):
        return remote_client.RemoteClient(
            self.get_server_ip(server, validation_resources),
            self.image_ssh_user, password=self.image_ssh_password,
            pkey=validation_resources['keypair']['private_key'],
            server=server, servers_client=self.servers_client,
            ssh_timeout=CONF.validation.ssh_timeout,
            connect_timeout=CONF.validation.connect_timeout,
            console_output_enabled=(
                CONF.compute_feature_enabled.console_output),
            ssh_shell_prologue=CONF.validation.ssh_shell_prologue,
            ssh_key_type=CONF.validation.ssh_key_type)

    def _create_validatable_server(self, validation_resources, **kwargs):
        server = self.create_test_server(
            validatable=True, validation_resources=validation_resources,
            wait_until='SSHABLE', **kwargs)
        # get_server_ip needs the addresses, which the create response
        # does not hold.
        server['addresses'] = self.servers_client.list_addresses(
            server['id'])['addresses']
        return server

    @decorators.idempotent_id('8fbc6a98-ec8d-46f7-93d4-4ca200db3d73')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.live_snapshot,
                          'Live snapshots are not enabled.')
    def test_snapshot_of_active_server(self):
        """An ACTIVE server's snapshot is an active image; it stays ACTIVE"""
        server = self.create_test_server(wait_until='ACTIVE')
        image = self._snapshot(server, 'ACTIVE')
        self._assert_snapshot_of(image, server)

    @decorators.idempotent_id('138a79ff-f608-4692-9c3e-d48902fad429')
    @decorators.attr(type='slow')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.live_snapshot,
                          'Live snapshots are not enabled.')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.boot_from_snapshot,
                          'Booting from snapshots is not enabled.')
    @testtools.skipUnless(CONF.validation.run_validation,
                          'SSH validation is not enabled.')
    def test_live_snapshot_holds_data_written_by_the_guest(self):
        """Data written before and during a live snapshot is in the image

        The guest writes a marker file, then keeps appending numbered,
        synced lines while the snapshot runs.  A server booted from the
        image must hold the marker and the lines 1..K, nothing torn.
        """
        validation_resources = self.get_class_validation_resources(
            self.os_primary)
        server = self._create_validatable_server(validation_resources)
        ssh = self._ssh(server, validation_resources)
        marker = data_utils.rand_name(name='snapdriver-marker')
        ssh.exec_command('echo %s > %s; sync' % (marker, MARKER_FILE))
        ssh.exec_command(WRITER)

        image = self._snapshot(server, 'ACTIVE')
        self._assert_snapshot_of(image, server)

        clone = self._create_validatable_server(validation_resources,
                                                image_id=image['id'])
        clone_ssh = self._ssh(clone, validation_resources)
        self.assertEqual(marker,
                         clone_ssh.exec_command('cat %s' % MARKER_FILE)
                         .strip())
        ticks = clone_ssh.exec_command(
            'cat %s 2>/dev/null || true' % TICKS_FILE).split()
        self.assertNotEqual([], ticks, 'no write of the guest reached the '
                            'image, not even those before the snapshot')
        self.assertEqual([str(i) for i in range(1, len(ticks) + 1)], ticks,
                         'the guest\'s numbered writes in the image are not '
                         'the lines 1..K')

    @decorators.idempotent_id('6717aef1-32fd-4782-9a2d-f8191dfa85f6')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.stopped_snapshot,
                          'Snapshots of stopped servers are not enabled.')
    def test_snapshot_of_stopped_server(self):
        """A SHUTOFF server's snapshot is an active image; it stays SHUTOFF"""
        server = self.create_test_server(wait_until='ACTIVE')
        self.servers_client.stop_server(server['id'])
        self._wait_for_server(server['id'], 'SHUTOFF')
        image = self._snapshot(server, 'SHUTOFF')
        self._assert_snapshot_of(image, server)

    @decorators.idempotent_id('7fae7d30-5633-4b29-be68-be2518a75b9f')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.paused_snapshot,
                          'Snapshots of paused servers are not enabled.')
    @testtools.skipUnless(CONF.compute_feature_enabled.pause,
                          'Pause is not available.')
    def test_snapshot_of_paused_server(self):
        """A PAUSED server's snapshot is an active image; it stays PAUSED"""
        server = self.create_test_server(wait_until='ACTIVE')
        self.servers_client.pause_server(server['id'])
        self._wait_for_server(server['id'], 'PAUSED')
        image = self._snapshot(server, 'PAUSED')
        self._assert_snapshot_of(image, server)

    @decorators.idempotent_id('46658526-7949-4e5e-8bd8-1e82de62bf0c')
    @testtools.skipUnless(CONF.snapdriver_feature_enabled.boot_from_snapshot,
                          'Booting from snapshots is not enabled.')
    def test_boot_from_snapshot(self):
        """A server boots ACTIVE from a snapshot image"""
        server = self.create_test_server(wait_until='ACTIVE')
        image = self._snapshot(server, 'ACTIVE')
        clone = self.create_test_server(image_id=image['id'],
                                        wait_until='ACTIVE')
        clone = self.servers_client.show_server(clone['id'])['server']
        self.assertEqual(image['id'], clone['image']['id'])
