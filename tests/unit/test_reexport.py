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

"""reexport: nova's own nova/virt gets our re-export, and loses only it.

nova's ``nova/virt`` is a temp directory here; whether nova imports the
driver is faked where a test says so (the functional test
``test_distro_install`` imports it for real, from two site directories).
"""

import os

import fixtures

from nova_snapdriver import reexport
from tests.unit import base


class ReexportTestCase(base.TestCase):

    def setUp(self):
        super(ReexportTestCase, self).setUp()
        self.virt = self.useFixture(fixtures.TempDir()).path
        self.useFixture(fixtures.MockPatchObject(
            reexport, 'nova_virt_dir', return_value=self.virt))
        self.target = os.path.join(self.virt, 'snapdriver', '__init__.py')

    def _loads(self, ok, detail):
        self.useFixture(fixtures.MockPatchObject(
            reexport, 'loads', return_value=(ok, detail)))

    def test_install_writes_the_marked_re_export_readable_by_all(self):
        self._loads(False, 'cannot import')
        self.assertEqual('Wrote %s' % self.target, reexport.install())

        with open(self.target) as f:
            text = f.read()
        self.assertTrue(text.startswith(reexport.MARK + '\n'))
        self.assertIn('from nova_snapdriver.driver import SnapLibvirtDriver',
                      text)
        self.assertEqual(0o644, os.stat(self.target).st_mode & 0o777)
        self.assertTrue(reexport.ours(self.target))
        self.assertEqual(['__init__.py'],
                         os.listdir(os.path.dirname(self.target)))

    def test_install_twice_rewrites_its_own_file(self):
        self._loads(False, 'cannot import')
        reexport.install()
        self.assertEqual('Wrote %s' % self.target, reexport.install())

    def test_install_where_nova_imports_it_already_writes_nothing(self):
        self._loads(True, 'nova.virt.snapdriver gives it')

        self.assertEqual('Nothing to do: nova.virt.snapdriver gives it',
                         reexport.install())
        self.assertFalse(os.path.exists(self.target))

    def test_a_file_not_ours_is_never_replaced_nor_removed(self):
        self._loads(False, 'cannot import')
        os.mkdir(os.path.dirname(self.target))
        with open(self.target, 'w') as f:
            f.write('# pip installed this\n')

        self.assertRaises(reexport.ReexportError, reexport.install)
        err = self.assertRaises(reexport.ReexportError, reexport.remove)
        self.assertIn('not written by this command', str(err))
        with open(self.target) as f:
            self.assertEqual('# pip installed this\n', f.read())

    def test_remove_takes_the_file_and_its_empty_directory(self):
        self._loads(False, 'cannot import')
        reexport.install()
        os.mkdir(os.path.join(self.virt, 'snapdriver', '__pycache__'))

        self.assertEqual('Removed %s' % self.target, reexport.remove())

        self.assertEqual([], os.listdir(self.virt))
        self.assertEqual('Nothing to remove: %s does not exist'
                         % self.target, reexport.remove())

    def test_loads_says_what_to_run_when_nova_cannot_import_it(self):
        self.useFixture(fixtures.MockPatch(
            'nova_snapdriver.reexport.importlib.import_module',
            side_effect=ImportError('No module named x')))
        ok, detail = reexport.loads()

        self.assertFalse(ok)
        self.assertIn('No module named x', detail)
        self.assertIn('nova-snapdriver-manage reexport', detail)
        self.assertIn(self.target, detail)

    def test_loads_our_driver_in_this_environment(self):
        ok, detail = reexport.loads()

        self.assertTrue(ok, detail)
        self.assertIn('nova_snapdriver.driver.SnapLibvirtDriver', detail)
