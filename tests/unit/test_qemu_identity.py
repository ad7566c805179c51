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

"""qemu_identity: QEMU's user from the domain XML, and the shared directory."""

import os
import stat
import tempfile
from unittest import mock

import fixtures

from nova_snapdriver import qemu_identity
from tests.unit import base

XML = """<domain type='qemu'>
  <name>instance-00000001</name>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+64055:+64055</label>
    <imagelabel>+64055:+64055</imagelabel>
  </seclabel>
</domain>"""

XML_SELINUX_FIRST = """<domain type='kvm'>
  <seclabel type='dynamic' model='selinux' relabel='yes'>
    <label>system_u:system_r:svirt_t:s0:c1,c2</label>
  </seclabel>
  <seclabel type='dynamic' model='dac' relabel='yes'>
    <label>+107:+107</label>
  </seclabel>
</domain>"""


class FromXmlTestCase(base.TestCase):

    def test_reads_the_dac_label(self):
        self.assertEqual(qemu_identity.Identity(64055, 64055),
                         qemu_identity.from_xml(XML))

    def test_skips_other_security_models(self):
        self.assertEqual(qemu_identity.Identity(107, 107),
                         qemu_identity.from_xml(XML_SELINUX_FIRST))

    def test_no_dac_label_is_unknown(self):
        self.assertIsNone(qemu_identity.from_xml(
            "<domain><seclabel type='none' model='none'/></domain>"))
        self.assertIsNone(qemu_identity.from_xml('<domain/>'))

    def test_a_label_by_name_is_unknown(self):
        # Only the live XML's numeric form is read; names could lie.
        self.assertIsNone(qemu_identity.from_xml(
            "<domain><seclabel model='dac'><label>qemu:qemu</label>"
            "</seclabel></domain>"))


class UnreachableTestCase(base.TestCase):

    def _as(self, euid, groups):
        self.useFixture(fixtures.MockPatch('os.geteuid', return_value=euid))
        self.useFixture(fixtures.MockPatch('os.getegid',
                                           return_value=groups[0]))
        self.useFixture(fixtures.MockPatch('os.getgroups',
                                           return_value=groups[1:]))

    def test_nova_in_qemus_group_reaches_it(self):
        self._as(120, [130, 64055])
        self.assertIsNone(qemu_identity.unreachable(
            qemu_identity.Identity(64055, 64055)))

    def test_qemu_as_novas_own_user_is_reached(self):
        self._as(120, [130])
        self.assertIsNone(qemu_identity.unreachable(
            qemu_identity.Identity(120, 999)))

    def test_root_reaches_any_qemu(self):
        self._as(0, [0])
        self.assertIsNone(qemu_identity.unreachable(
            qemu_identity.Identity(64055, 64055)))

    def test_nova_outside_qemus_group_is_told_what_to_fix(self):
        self._as(120, [130, 131])
        why = qemu_identity.unreachable(qemu_identity.Identity(64055, 64055))
        self.assertIn('not in group 64055', why)
        self.assertIn('qemu.conf', why)

    def test_an_unknown_qemu_user_is_not_reachable(self):
        self.assertIn('no DAC security label',
                      qemu_identity.unreachable(None))


class SharedDirTestCase(base.TestCase):

    def setUp(self):
        super().setUp()
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, self.dir)
        self.path = os.path.join(self.dir, 'export')
        self.addCleanup(lambda: os.path.isdir(self.path) and
                        os.rmdir(self.path))

    def _mode(self):
        return stat.S_IMODE(os.stat(self.path).st_mode)

    def test_qemu_as_this_user_gets_a_private_dir(self):
        ident = qemu_identity.Identity(os.geteuid(), 12345)
        with mock.patch('os.chown') as chown:
            mode = qemu_identity.make_shared_dir(self.path, ident)
        self.assertEqual(0o700, mode)
        self.assertEqual(0o700, self._mode())
        chown.assert_not_called()

    def test_another_qemu_user_gets_its_group_and_mode_0730(self):
        ident = qemu_identity.Identity(os.geteuid() + 1, 54321)
        with mock.patch('os.chown') as chown:
            mode = qemu_identity.make_shared_dir(self.path, ident)
        chown.assert_called_once_with(self.path, -1, 54321)
        self.assertEqual(0o730, mode)
        self.assertEqual(0o730, self._mode())
        # Never world-writable, nor enterable by others.
        self.assertFalse(self._mode() & 0o007)

    def test_a_socket_path_past_sun_path_is_refused_with_the_fix(self):
        # <snapshots_directory>/<image uuid>/nbd/sock must fit in 107
        # bytes; a long snapshots_directory cannot stream.
        uuid = 'c0ffee00-1234-4abc-8def-0123456789ab'
        fits = '/var/lib/nova/instances/snapshots/' + uuid
        self.assertIsNone(qemu_identity.socket_path_too_long(fits))
        long = '/var/tmp/nova-snapdriver-minicloud/nova/instances/' \
            'snapshots-of-a-long-name/' + uuid
        why = qemu_identity.socket_path_too_long(long)
        self.assertIn('more than a unix socket takes (107)', why)
        self.assertIn('snapshots_directory a shorter path', why)

    def test_an_existing_directory_is_refused(self):
        # The work dir is new for each snapshot: a socket directory that
        # is already there was not made by us.
        os.mkdir(self.path, 0o777)
        self.assertRaises(FileExistsError, qemu_identity.make_shared_dir,
                          self.path, qemu_identity.Identity(1, 1))
