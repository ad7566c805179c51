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

"""recovery: what a dead snapshot left behind is repaired, once, in order.

And only that: jobs that are not the snapshot's, the domain of an instance
with another snapshot in flight, a definition that changed, are left
alone; a record is kept until all of it is done.

Records are real journal files (written by ``journal.begin`` and released,
as a dead process leaves them) in the tmp journal; libvirt is a
FakeConnection holding FakeDomains (autospec'd ``virConnect`` and
``virDomain``), Glance an autospec'd image API, temp dirs real files.
"""

import json
import os
import shutil
import stat
import time
from unittest import mock

import fixtures
import libvirt

from nova import context as nova_context
from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver import journal
from nova_snapdriver import recovery
from tests.unit import base

OTHER_IMAGE = 'decade00-1234-4abc-8def-0123456789ab'
NEW_IMAGE = 'beef0000-1234-4abc-8def-0123456789ab'
OTHER_UUID = '0b0b0b0b-2b5e-4c8e-9a0d-3e2f1c4b5a69'
SAVE_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
# Calls that change the domain, the host or the image.
CHANGES = {'blockJobAbort', 'abortJob', 'defineXML', 'delete', 'undefine',
           'undefineFlags', 'rmtree'}


def _pretty(xml):
    """The same XML as libvirt would not write it: indented, "-quoted."""
    return xml.replace('><', '>\n    <').replace("'", '"') + '\n'


class MirrorDomain(base.FakeDomain):
    """A FakeDomain whose copy job mirrors into ``mirror_path``."""

    mirror_path = '/nowhere/overlay.qcow2'

    def xml(self, flags=0):
        return super(MirrorDomain, self).xml(flags).replace(
            '/nowhere/overlay.qcow2', self.mirror_path)


def _backup_xml(path, kind='target', mode='push', dev=base.DISK_DEV):
    return ("<domainbackup mode='%s'><disks><disk name='%s' backup='yes' "
            "type='file'><%s file='%s'/><driver type='qcow2'/></disk>"
            "<disk name='vdb' backup='no'/></disks></domainbackup>"
            % (mode, dev, kind, path))


class RecoveryTestCase(base.TestCase):

    def setUp(self):
        super(RecoveryTestCase, self).setUp()
        self.disk = base.make_raw(os.path.join(
            self.tmp, 'instances', base.INSTANCE_UUID, 'disk'))
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        os.makedirs(self.work_dir)
        with open(os.path.join(self.work_dir, 'overlay.qcow2'), 'wb') as f:
            f.write(b'half a copy')
        # A domain left transient in the middle of its block copy, the
        # mirror writing into the snapshot's overlay.
        self.domain = MirrorDomain(base.file_disk_xml(self.disk),
                                   persistent=False)
        self.domain.mirror_path = os.path.join(self.work_dir,
                                               'overlay.qcow2')
        self.domain.job = {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
                           'bandwidth': 0, 'cur': 5, 'end': 10}
        self.domain.mirror = 'yes'
        self.domain.mock.jobStats.return_value = {
            'type': libvirt.VIR_DOMAIN_JOB_NONE}
        self.saved_xml = self.domain.xml(SAVE_FLAGS)
        self.conn = base.FakeConnection(self.domain)
        self.image_api = base.autospec(glance.API)
        self.image_api.get.return_value = {'id': base.IMAGE_ID,
                                           'status': 'queued'}
        self.path = os.path.join(self.journal_dir, base.IMAGE_ID + '.json')
        # Everything that changes something, in order, with whether the
        # record still existed then.
        self.events = []
        self._record_event(self.domain.mock, 'blockJobAbort')
        self._record_event(self.domain.mock, 'abortJob')
        self._record_event(self.conn.mock, 'defineXML')
        self._record_event(self.image_api, 'delete')
        real_rmtree = shutil.rmtree
        self.useFixture(fixtures.MockPatchObject(
            recovery.shutil, 'rmtree', autospec=True,
            side_effect=lambda path: (self._event('rmtree', path),
                                      real_rmtree(path))[1]))

    def _event(self, name, *args):
        self.events.append((name, args, os.path.exists(self.path)))

    def _record_event(self, mock_obj, name):
        method = getattr(mock_obj, name)
        effect = method.side_effect

        def side_effect(*args, **kwargs):
            self._event(name, *args)
            if effect is not None:
                return effect(*args, **kwargs)
            return mock.DEFAULT
        method.side_effect = side_effect

    def _dead_record(self, image_id=base.IMAGE_ID, **fields):
        """What a snapshot leaves when its process dies: record, no lock."""
        fields.setdefault('xml', self.saved_xml)
        fields.setdefault('disk_path', self.disk)
        record = base.begin_journal_record(self.snapshots_dir, image_id,
                                           **fields)
        record.release()
        return record.path

    def _live_record(self, image_id=NEW_IMAGE, **fields):
        """A snapshot in flight: its record and lock held, its work dir."""
        fields.setdefault('xml', self.saved_xml)
        fields.setdefault('disk_path', self.disk)
        fields.setdefault('persistent', False)
        record = base.begin_journal_record(self.snapshots_dir, image_id,
                                           **fields)
        self.addCleanup(record.release)
        os.makedirs(record.data['work_dir'], exist_ok=True)
        return record

    def _stored(self, path=None):
        with open(path or self.path) as f:
            return json.load(f)

    def _recover(self, dry_run=False, image_api=True):
        return recovery.recover(
            self.conn.mock, self.image_api if image_api else None,
            self.context, dry_run=dry_run)

    def _changes(self):
        return [name for name, _args, _exists in self.events]

    def _assert_record_gone(self, path=None):
        path = path or self.path
        self.assertFalse(os.path.exists(path))
        self.assertFalse(os.path.exists(path[:-len('.json')] + '.lock'))

    # --- the whole repair -------------------------------------------------

    def test_dead_snapshot_is_repaired_in_order_and_its_record_last(self):
        self._dead_record()

        reports = self._recover()

        self.assertEqual(
            [{'record': self.path, 'state': 'recovered',
              'instance_uuid': base.INSTANCE_UUID,
              'image_id': base.IMAGE_ID, 'phase': 'copying',
              'actions': [
                  'aborted the block job on vda',
                  'redefined the domain instance-00000001 from its saved '
                  'XML',
                  'deleted %s' % self.work_dir,
                  'deleted image %s left queued' % base.IMAGE_ID],
              'problems': [], 'pending': [], 'left_alone': [],
              'attempts': 1}], reports)
        self.assertEqual(
            [('blockJobAbort', (base.DISK_DEV, 0), True),
             ('defineXML', (self.saved_xml,), True),
             ('rmtree', (self.work_dir,), True),
             ('delete', (self.context, base.IMAGE_ID), True)], self.events)
        self.image_api.get.assert_called_once_with(self.context,
                                                   base.IMAGE_ID)
        # Once to repair, once to check the definition took.
        self.assertEqual(
            [mock.call(base.INSTANCE_UUID)] * 2,
            self.conn.mock.lookupByUUIDString.call_args_list)
        self.assertIsNone(self.domain.job)
        self.assertTrue(self.domain.persistent)
        self.assertFalse(os.path.exists(self.work_dir))
        self._assert_record_gone()
        self.assertEqual([], os.listdir(self.journal_dir))
        self.assertIn('Recovery of snapshot %s interrupted in phase copying: '
                      'aborted the block job on vda' % base.IMAGE_ID,
                      self.logs.output)

    def test_second_run_finds_nothing_to_do(self):
        self._dead_record()
        self._recover()
        self.events = []

        self.assertEqual([], self._recover())

        self.assertEqual([], self.events)
        self.assertEqual([], journal.paths())

    def test_partly_repaired_record_finishes_without_redoing_anything(self):
        # A first recovery died after the redefine, the rmtree and the
        # image delete, before removing the record.
        self._dead_record()
        self.domain.job = None
        self.domain.persistent = True
        shutil.rmtree(self.work_dir)
        self.events = []  # that rmtree was ours, through the same patch
        self.image_api.get.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)

        report, = self._recover()

        self.assertEqual(('recovered', [], []), (
            report['state'], report['actions'], report['problems']))
        self.assertEqual([], self.events)
        self._assert_record_gone()

    # --- the block job ----------------------------------------------------

    def test_no_block_job_nothing_is_aborted(self):
        self.domain.job = None
        self._dead_record()

        report, = self._recover()

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertNotIn('aborted the block job on vda', report['actions'])
        self.domain.mock.blockJobInfo.assert_called_once_with(
            base.DISK_DEV, 0)

    def test_block_job_info_failing_counts_as_no_job(self):
        self.domain.mock.blockJobInfo.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_INVALID, 'disk vda not found')
        self._dead_record()

        report, = self._recover()

        self.assertEqual(['defineXML', 'rmtree', 'delete'], self._changes())
        self.assertEqual('recovered', report['state'])

    def test_shut_off_domain_is_not_asked_for_a_job(self):
        self.domain.state = libvirt.VIR_DOMAIN_SHUTOFF
        self._dead_record()

        self._recover()

        self.domain.mock.blockJobInfo.assert_not_called()
        self.assertEqual(['defineXML', 'rmtree', 'delete'], self._changes())

    def test_record_without_a_disk_is_not_asked_for_a_job(self):
        self._dead_record(disk_dev=None)

        self._recover()

        self.domain.mock.blockJobInfo.assert_not_called()
        self.assertNotIn('blockJobAbort', self._changes())

    # --- the definition ---------------------------------------------------

    def test_domain_gone_is_defined_from_the_saved_xml(self):
        del self.conn.domains[base.INSTANCE_UUID]
        self._dead_record()

        report, = self._recover()

        self.assertEqual([self.saved_xml], self.conn.defined)
        self.assertEqual(['defineXML', 'rmtree', 'delete'], self._changes())
        self.assertIn('redefined the domain instance-00000001 from its '
                      'saved XML', report['actions'])

    def test_persistent_domain_with_the_same_definition_is_left_alone(self):
        self.domain.persistent = True
        self.domain.job = None
        self._dead_record(xml=_pretty(self.saved_xml))
        self.assertNotEqual(self.saved_xml, _pretty(self.saved_xml))

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.domain.mock.XMLDesc.assert_called_once_with(SAVE_FLAGS)
        self.assertEqual([], report['problems'])
        self.assertEqual(['rmtree', 'delete'], self._changes())

    def test_persistent_domain_changed_since_is_reported_not_overwritten(self):
        self.domain.persistent = True
        self.domain.job = None
        self._dead_record()
        # Someone changed the definition after the snapshot began.
        self.domain.disk_xml = self.domain.disk_xml.replace(
            '<target', '<serial>changed</serial><target')

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertEqual(
            ['the domain is persistent with a definition that changed since '
             'the snapshot began; left as it is'], report['problems'])
        self.assertEqual('recovered', report['state'])
        # The rest is still repaired.
        self.assertEqual(['rmtree', 'delete'], self._changes())
        self._assert_record_gone()
        self.assertIn('WARNING Recovery of snapshot %s: the domain is '
                      'persistent with a definition that changed'
                      % base.IMAGE_ID, self.logs.output)

    def test_domain_transient_before_the_snapshot_is_not_defined(self):
        self._dead_record(persistent=False)

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertFalse(self.domain.persistent)
        self.assertEqual(['blockJobAbort', 'rmtree', 'delete'],
                         self._changes())
        self.assertEqual('recovered', report['state'])

    def test_cold_snapshot_record_has_no_xml_to_define(self):
        del self.conn.domains[base.INSTANCE_UUID]
        self._dead_record(xml=None, persistent=False, phase='extracting')

        self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertEqual(['rmtree', 'delete'], self._changes())

    # --- a guest the snapshot saved (disable_libvirt_livesnapshot) --------

    def _saved_guest(self, saved=True, has_image=True,
                     state=libvirt.VIR_DOMAIN_SHUTOFF, **fields):
        """A cold stream of a saved guest, dead after its managed save."""
        self.domain.job = None
        self.domain.mirror = None
        self.domain.persistent = True
        self.domain.state = state
        self.domain.mock.hasManagedSaveImage.return_value = int(has_image)
        self._record_event(self.domain.mock, 'create')
        fields.setdefault('phase', 'streaming')
        return self._dead_record(xml=None, persistent=False,
                                 capture_method='stream', saved=saved,
                                 **fields)

    def test_guest_the_snapshot_saved_is_started_from_its_saved_state(self):
        self._saved_guest()

        reports = self._recover()

        self.assertEqual('recovered', reports[0]['state'])
        self.domain.mock.hasManagedSaveImage.assert_called_once_with(0)
        self.domain.mock.create.assert_called_once_with()
        self.assertIn('started the domain instance-00000001 from the state '
                      'the snapshot saved', reports[0]['actions'])
        self.assertEqual(['create', 'rmtree', 'delete'], self._changes())
        self._assert_record_gone()

    def test_saved_guest_of_no_record_of_ours_is_not_started(self):
        # The record does not say the snapshot saved it: someone else did.
        for saved in (False, None):
            self._saved_guest(saved=saved)

            self._recover()

            self.domain.mock.create.assert_not_called()

    def test_shut_off_guest_without_a_saved_state_is_not_started(self):
        self._saved_guest(has_image=False)

        reports = self._recover()

        self.domain.mock.create.assert_not_called()
        self.assertEqual('recovered', reports[0]['state'])
        self.assertIn('the domain instance-00000001 is shut off with no '
                      'saved state: the snapshot did not leave it so, not '
                      'started', reports[0]['left_alone'])

    def test_guest_running_again_is_left_alone(self):
        self._saved_guest(state=libvirt.VIR_DOMAIN_RUNNING,
                          phase='suspending')

        reports = self._recover()

        self.domain.mock.create.assert_not_called()
        self.domain.mock.hasManagedSaveImage.assert_not_called()
        self.assertEqual('recovered', reports[0]['state'])

    def test_saved_guest_dry_run_starts_nothing(self):
        self._saved_guest()

        reports = self._recover(dry_run=True)

        self.domain.mock.create.assert_not_called()
        self.assertIn('started the domain instance-00000001 from the state '
                      'the snapshot saved', reports[0]['actions'])
        self.assertTrue(os.path.exists(self.path))

    def test_saved_guest_that_does_not_start_keeps_the_record(self):
        self._saved_guest()
        self.domain.mock.create.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_OPERATION_FAILED, 'Failed to get "write" lock')

        reports = self._recover()

        self.assertEqual('incomplete', reports[0]['state'])
        self.assertEqual(['start the domain instance-00000001 from its '
                          'managed save'], reports[0]['pending'])
        self.assertIn('Failed to get "write" lock',
                      ' '.join(reports[0]['problems']))
        self.assertTrue(self._stored()['saved'])

    def test_saved_guest_waits_for_a_snapshot_in_flight(self):
        self._saved_guest()
        self._live_record(xml=None, phase='streaming')

        reports = self._recover()

        self.domain.mock.create.assert_not_called()
        self.assertEqual('incomplete', reports[0]['state'])

    def test_libvirt_failing_fails_the_record_keeps_it_and_goes_on(self):
        self._dead_record()
        other = self._dead_record(image_id=OTHER_IMAGE,
                                  instance_uuid='other-uuid', persistent=False)
        errors = {base.INSTANCE_UUID: base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'connection reset')}
        lookup = self.conn.mock.lookupByUUIDString.side_effect

        def flaky_lookup(uuid):
            if uuid in errors:
                raise errors[uuid]
            return lookup(uuid)
        self.conn.mock.lookupByUUIDString.side_effect = flaky_lookup

        first, second = self._recover()

        self.assertEqual(('failed', ['connection reset']),
                         (first['state'], first['problems']))
        self.assertTrue(os.path.exists(self.path))
        self.assertTrue(os.path.isdir(self.work_dir))
        # Its lock was let go: a later run can retry it.
        fd = journal.try_lock(self.path)
        self.assertIsNotNone(fd)
        os.close(fd)
        self.assertEqual('recovered', second['state'])
        self._assert_record_gone(other)
        self.assertIn('Recovering snapshot journal record %s failed'
                      % self.path, self.logs.output)

        del errors[base.INSTANCE_UUID]
        self.assertEqual(['recovered'],
                         [r['state'] for r in self._recover()])
        self._assert_record_gone()

    # --- the temp dir -----------------------------------------------------

    def test_missing_temp_dir_is_not_an_action(self):
        shutil.rmtree(self.work_dir)
        self.events = []
        self._dead_record()

        report, = self._recover()

        self.assertNotIn('rmtree', self._changes())
        self.assertFalse([a for a in report['actions']
                          if a.startswith('deleted /')])

    def _refused(self, work_dir):
        self.events = []
        self._dead_record(work_dir=work_dir, xml=None, persistent=False)
        report, = self._recover()
        self.assertNotIn('rmtree', self._changes())
        return report

    def test_a_work_dir_outside_the_snapshots_directory_is_never_deleted(
            self):
        # Recovery may run as root: a record naming /etc must not be
        # obeyed.
        outside = os.path.join(self.tmp, 'precious')
        os.makedirs(outside)
        report = self._refused(outside)
        self.assertTrue(os.path.isdir(outside))
        self.assertIn('not inside [libvirt] snapshots_directory',
                      ' '.join(report['problems']))

    def test_the_snapshots_directory_itself_is_never_deleted(self):
        self._refused(self.snapshots_dir)
        self.assertTrue(os.path.isdir(self.snapshots_dir))

    def test_a_symbolic_link_into_elsewhere_is_never_followed(self):
        outside = os.path.join(self.tmp, 'precious')
        os.makedirs(outside)
        link = os.path.join(self.snapshots_dir, 'link')
        os.symlink(outside, link)
        report = self._refused(link)
        self.assertTrue(os.path.isdir(outside))
        self.assertIn('symbolic link', ' '.join(report['problems']))

    # --- the image --------------------------------------------------------

    def _image_status(self, status):
        self.image_api.get.return_value = {'id': base.IMAGE_ID,
                                           'status': status}
        self._dead_record()
        report, = self._recover()
        return report

    def test_saving_image_is_deleted(self):
        report = self._image_status('saving')

        self.image_api.delete.assert_called_once_with(self.context,
                                                      base.IMAGE_ID)
        self.assertIn('deleted image %s left saving' % base.IMAGE_ID,
                      report['actions'])

    def test_active_image_is_left_alone(self):
        report = self._image_status('active')

        self.image_api.delete.assert_not_called()
        self.assertFalse([a for a in report['actions'] if 'image' in a])
        self.assertEqual([], report['problems'])
        self._assert_record_gone()

    def test_image_already_gone_is_nothing_to_do(self):
        self.image_api.get.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)
        self._dead_record()

        report, = self._recover()

        self.image_api.delete.assert_not_called()
        self.assertEqual([], report['problems'])
        self.assertEqual('recovered', report['state'])

    def test_image_gone_before_its_delete_is_still_a_success(self):
        self.image_api.delete.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)
        self._dead_record()

        report, = self._recover()

        self.assertEqual([], report['problems'])
        self._assert_record_gone()

    def test_image_delete_refused_is_reported_with_advice(self):
        self.image_api.delete.side_effect = nova_exception.Forbidden(
            'not your image')
        self._dead_record()

        report, = self._recover()

        self.assertEqual(
            ["image %s is left queued and could not be deleted (not your "
             "image); delete it with 'openstack image delete %s'"
             % (base.IMAGE_ID, base.IMAGE_ID)], report['problems'])
        self.assertNotIn('deleted image %s left queued' % base.IMAGE_ID,
                         report['actions'])
        # Kept until the image is gone: the operator deletes it, and the
        # next run finds nothing left.
        self.assertEqual(('incomplete', ['delete image %s (left queued)'
                                         % base.IMAGE_ID]),
                         (report['state'], report['pending']))
        self.assertTrue(os.path.exists(self.path))
        self.image_api.get.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)
        report, = self._recover()
        self.assertEqual(('recovered', 2), (report['state'],
                                            report['attempts']))
        self._assert_record_gone()

    def test_image_that_cannot_be_checked_is_reported_with_advice(self):
        self.image_api.get.side_effect = nova_exception.Unauthorized()
        self._dead_record()

        report, = self._recover()

        problem, = report['problems']
        self.assertIn('could not check image %s' % base.IMAGE_ID, problem)
        self.assertIn("delete it with 'openstack image delete %s'"
                      % base.IMAGE_ID, problem)
        self.image_api.delete.assert_not_called()
        self.assertEqual(['delete image %s if it is left queued'
                          % base.IMAGE_ID], report['pending'])
        self.assertTrue(os.path.exists(self.path))

    def test_no_image_service_is_reported(self):
        self._dead_record()

        report, = self._recover(image_api=False)

        self.assertEqual(['image %s may be left queued: no image service to '
                          'check it with' % base.IMAGE_ID],
                         report['problems'])
        self._assert_record_gone()

    # --- dry run ----------------------------------------------------------

    def test_dry_run_changes_nothing_and_keeps_the_record(self):
        self._dead_record()
        with open(self.path) as f:
            before = f.read()

        report, = self._recover(dry_run=True)

        self.assertEqual('dry run', report['state'])
        self.assertEqual(
            ['aborted the block job on vda',
             'redefined the domain instance-00000001 from its saved XML',
             'deleted %s' % self.work_dir,
             'deleted image %s left queued' % base.IMAGE_ID],
            report['actions'])
        self.assertEqual([], self.events)
        self.assertIsNotNone(self.domain.job)
        self.assertFalse(self.domain.persistent)
        self.assertTrue(os.path.isdir(self.work_dir))
        with open(self.path) as f:
            self.assertEqual(before, f.read())
        self.assertIn('(dry run: not done)', self.logs.output)
        # Nothing was done, so the real run still has everything to do.
        self.assertEqual(4, len(self._recover()[0]['actions']))

    # --- records recovery must not touch ----------------------------------

    def test_snapshot_in_flight_is_skipped(self):
        record = journal.begin(
            instance_uuid=base.INSTANCE_UUID, image_id=base.IMAGE_ID,
            work_dir=self.work_dir, disk_dev=base.DISK_DEV,
            xml=self.saved_xml, persistent=True, phase='copying')
        self.addCleanup(record.release)

        report, = self._recover()

        self.assertEqual({'record': self.path, 'state': 'in flight',
                          'image_id': base.IMAGE_ID, 'actions': [],
                          'problems': []}, report)
        self.conn.mock.lookupByUUIDString.assert_not_called()
        self.image_api.get.assert_not_called()
        self.assertEqual([], self.events)
        self.assertTrue(os.path.exists(self.path))
        self.assertTrue(os.path.isdir(self.work_dir))
        # Still the snapshot's lock, not ours.
        self.assertIsNone(journal.try_lock(self.path))

    def test_corrupt_record_is_reported_kept_and_the_others_recovered(self):
        self._dead_record()
        os.utime(self.path, (1, 1))  # first in the journal's order
        os.utime(self._truncate(self._dead_record(
            image_id=OTHER_IMAGE)), (2, 2))
        corrupt = os.path.join(self.journal_dir, OTHER_IMAGE + '.json')

        first, second = self._recover()

        self.assertEqual('recovered', first['state'])
        self.assertEqual(
            {'record': corrupt, 'state': 'corrupt', 'image_id': OTHER_IMAGE,
             'actions': []}, {k: v for k, v in second.items()
                              if k != 'problems'})
        problem, = second['problems']
        self.assertIn('%s: unreadable' % corrupt, problem)
        self.assertTrue(os.path.exists(corrupt))
        self._assert_record_gone()
        self.assertIn('ERROR Skipping a corrupt snapshot journal record',
                      self.logs.output)

    def test_corrupt_record_first_does_not_stop_the_rest(self):
        corrupt = self._truncate(self._dead_record(image_id=OTHER_IMAGE))
        os.utime(corrupt, (1, 1))
        self._dead_record()

        states = [r['state'] for r in self._recover()]

        self.assertEqual(['corrupt', 'recovered'], states)
        self._assert_record_gone()

    def _truncate(self, path):
        with open(path) as f:
            text = f.read()
        with open(path, 'w') as f:
            f.write(text[:len(text) // 3])
        return path

    def test_record_with_missing_keys_is_corrupt(self):
        os.makedirs(self.journal_dir)
        journal.write_atomically(self.path, json.dumps(
            {'version': 1, 'image_id': base.IMAGE_ID}))

        report, = self._recover()

        self.assertEqual('corrupt', report['state'])
        self.assertIn('missing instance_uuid, phase, work_dir',
                      report['problems'][0])
        self.assertEqual([], self.events)

    def test_record_finished_between_listing_and_locking(self):
        os.makedirs(self.journal_dir)

        report = recovery.recover_one(self.conn.mock, self.path,
                                      self.image_api, self.context)

        self.assertEqual({'record': self.path, 'state': 'finished',
                          'image_id': base.IMAGE_ID, 'actions': [],
                          'problems': []}, report)
        # The lock file try_lock made is not left behind.
        self.assertEqual([], os.listdir(self.journal_dir))

    def test_empty_journal_is_nothing_to_do(self):
        self.assertEqual([], self._recover())
        self.conn.mock.lookupByUUIDString.assert_not_called()

    # --- only our jobs ----------------------------------------------------

    def test_block_job_of_someone_else_is_left_alone_and_reported(self):
        self.domain.mirror_path = '/var/lib/elsewhere/copy.qcow2'
        self._dead_record(persistent=False)

        report, = self._recover()

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertIsNotNone(self.domain.job)
        self.assertEqual(
            ['a block job that is not ours runs on vda (mirror into '
             '/var/lib/elsewhere/copy.qcow2)'], report['left_alone'])
        # What is the record's own is still cleaned, and it is done.
        self.assertEqual(['rmtree', 'delete'], self._changes())
        self.assertEqual(('recovered', []),
                         (report['state'], report['problems']))
        self._assert_record_gone()

    def test_mirror_into_a_sibling_of_the_work_dir_is_not_ours(self):
        # Same prefix, another directory: not inside the work dir.
        self.domain.mirror_path = self.work_dir + '-other/overlay.qcow2'
        self._dead_record(persistent=False)

        report, = self._recover()

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertEqual(1, len(report['left_alone']))

    def test_job_with_no_mirror_is_not_ours(self):
        # A block commit or pull: no <mirror>, never a snapshot's job.
        self.domain.mirror = None
        self.domain.job['type'] = libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT
        self._dead_record(persistent=False)

        report, = self._recover()

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertEqual(['a block job that is not ours runs on vda (no '
                          'mirror of ours)'], report['left_alone'])

    def test_job_of_ours_in_an_early_capture_phase_is_aborted(self):
        # A copy (blockCopy) starts in the 'overlay' phase.
        self._dead_record(persistent=False, capture_method='copy',
                          phase='overlay')

        report, = self._recover()

        self.assertEqual(['blockJobAbort', 'rmtree', 'delete'],
                         self._changes())
        self.assertEqual('recovered', report['state'])

    def test_job_into_the_work_dir_past_the_capture_is_not_aborted(self):
        self._dead_record(phase='extracting')

        report, = self._recover()

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertNotIn('rmtree', self._changes())
        self.assertTrue(os.path.isdir(self.work_dir))
        self.assertEqual(
            ['abort the block job on vda', 'delete %s' % self.work_dir],
            report['pending'])
        self.assertIn("abort it ('virsh blockjob instance-00000001 vda "
                      "--abort')", report['problems'][0])
        self.assertEqual('incomplete', report['state'])
        self.assertTrue(os.path.exists(self.path))

    def _backup(self, target_xml):
        self.domain.job = None
        self.domain.mirror = None
        running = {'type': libvirt.VIR_DOMAIN_JOB_UNBOUNDED,
                   'operation': libvirt.VIR_DOMAIN_JOB_OPERATION_BACKUP}
        self.domain.mock.jobStats.return_value = running
        self.domain.mock.backupGetXMLDesc.return_value = target_xml

        def abort_job():
            self.domain.mock.jobStats.return_value = {
                'type': libvirt.VIR_DOMAIN_JOB_NONE}
            return 0
        effect = self.domain.mock.abortJob.side_effect
        self.domain.mock.abortJob.side_effect = lambda: (
            effect(), abort_job())[1]

    def test_push_backup_into_the_work_dir_is_aborted(self):
        self._backup(_backup_xml(os.path.join(self.work_dir, 'image')))
        self._dead_record(persistent=False, capture_method='backup',
                          phase='backup')

        report, = self._recover()

        self.assertEqual(['abortJob', 'rmtree', 'delete'], self._changes())
        self.assertEqual('aborted the backup job of instance-00000001',
                         report['actions'][0])
        self.domain.mock.backupGetXMLDesc.assert_called_once_with(0)

    def test_backup_begun_before_its_step_is_ours_too(self):
        # backupBegin runs before the 'backup' step is written.
        self._backup(_backup_xml(os.path.join(self.work_dir, 'image')))
        self._dead_record(persistent=False, capture_method='backup',
                          phase='planned')

        self._recover()

        self.assertEqual(['abortJob', 'rmtree', 'delete'], self._changes())

    def test_pull_backup_with_its_scratch_in_the_work_dir_is_ours(self):
        self._backup(_backup_xml(os.path.join(self.work_dir, 'scratch'),
                                 kind='scratch', mode='pull'))
        self._dead_record(persistent=False, capture_method='backup',
                          phase='backup')

        self._recover()

        self.assertIn('abortJob', self._changes())

    def test_backup_of_someone_else_is_left_alone(self):
        self._backup(_backup_xml('/var/backups/vda.qcow2'))
        self._dead_record(persistent=False, capture_method='backup',
                          phase='backup')

        report, = self._recover()

        self.assertNotIn('abortJob', self._changes())
        self.assertEqual(['a backup job that is not ours runs on '
                          'instance-00000001 (writing into '
                          '/var/backups/vda.qcow2)'], report['left_alone'])
        self.assertEqual('recovered', report['state'])

    def test_backup_listed_as_a_block_job_too_is_aborted_once(self):
        self._backup(_backup_xml(os.path.join(self.work_dir, 'image')))
        self.domain.job = {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP,
                           'bandwidth': 0, 'cur': 1, 'end': 2}
        self._dead_record(persistent=False, capture_method='backup',
                          phase='backup')

        report, = self._recover(dry_run=True)

        self.assertEqual(['aborted the backup job of instance-00000001',
                          'deleted %s' % self.work_dir,
                          'deleted image %s left queued' % base.IMAGE_ID],
                         report['actions'])
        self.assertEqual([], report['left_alone'])

    # --- an instance with a snapshot in flight ----------------------------

    def test_instance_with_a_snapshot_in_flight_is_left_alone(self):
        # The stale record's snapshot left the domain transient; a new
        # snapshot of it is copying now, into its own work dir.
        live = self._live_record(phase='copying')
        self.domain.mirror_path = os.path.join(live.data['work_dir'],
                                               'overlay.qcow2')
        self._dead_record(phase='undefined')
        live_before = self._stored(live.path)

        report, = [r for r in self._recover() if r['record'] == self.path]

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertNotIn('defineXML', self._changes())
        self.assertIsNotNone(self.domain.job)
        self.assertFalse(self.domain.persistent)
        # Its own temp files and image are cleaned all the same.
        self.assertEqual(['rmtree', 'delete'], self._changes())
        self.assertEqual(('rmtree', (self.work_dir,), True), self.events[0])
        self.assertTrue(os.path.isdir(live.data['work_dir']))
        self.assertEqual('incomplete', report['state'])
        self.assertEqual(['redefine the domain instance-00000001 from its '
                          'saved XML'], report['pending'])
        self.assertIn('snapshot %s of the same instance is in flight (pid '
                      '%d, phase copying)' % (NEW_IMAGE, os.getpid()),
                      report['problems'][0])
        self.assertEqual(['a block job that is not ours runs on vda (mirror '
                          'into %s/overlay.qcow2)' % live.data['work_dir']],
                         report['left_alone'])
        # The record keeps what is left and the attempt.
        stored = self._stored()
        self.assertEqual(1, stored['recovery']['attempts'])
        self.assertEqual(report['pending'], stored['recovery']['pending'])
        # The snapshot in flight: untouched, its lock still its own.
        self.assertEqual(live_before, self._stored(live.path))
        self.assertIsNone(journal.try_lock(live.path))

        # Once it is over (its job aborted, its record removed), the
        # next run finishes the repair.
        self.domain.job = self.domain.mirror = None
        live.remove()
        self.image_api.get.side_effect = nova_exception.ImageNotFound(
            image_id=base.IMAGE_ID)
        self.events = []

        report, = self._recover()

        self.assertEqual(['defineXML'], self._changes())
        self.assertEqual(('recovered', 2), (report['state'],
                                            report['attempts']))
        self.assertTrue(self.domain.persistent)
        self._assert_record_gone()

    def test_stale_job_of_ours_waits_for_the_snapshot_in_flight(self):
        self._live_record(phase='planned')
        self._dead_record()

        report, = [r for r in self._recover() if r['record'] == self.path]

        self.assertEqual(['delete'], self._changes())
        self.assertIsNotNone(self.domain.job)
        # The job writes into the work dir: it stays.
        self.assertTrue(os.path.isdir(self.work_dir))
        self.assertEqual(
            ['abort the block job on vda',
             'redefine the domain instance-00000001 from its saved XML',
             'delete %s' % self.work_dir], report['pending'])

    def test_snapshot_in_flight_of_another_instance_does_not_matter(self):
        self._live_record(instance_uuid=OTHER_UUID)
        self._dead_record()

        report, = [r for r in self._recover() if r['record'] == self.path]

        self.assertEqual(['blockJobAbort', 'defineXML', 'rmtree', 'delete'],
                         self._changes())
        self.assertEqual('recovered', report['state'])

    def test_dead_record_of_the_same_instance_does_not_defer(self):
        # Two stale records: the newer one's job is undone first, then the
        # older one's redefine, in one run; reports in the journal's order.
        newer = self._dead_record(image_id=NEW_IMAGE, persistent=False)
        newer_dir = os.path.join(self.snapshots_dir, NEW_IMAGE)
        os.makedirs(newer_dir)
        self.domain.mirror_path = os.path.join(newer_dir, 'overlay.qcow2')
        self._dead_record(phase='undefined')
        stored = self._stored()
        stored['started_at'] -= 60
        journal.write_atomically(self.path, json.dumps(stored))
        os.utime(self.path, (1, 1))

        first, second = self._recover()

        self.assertEqual([self.path, newer], [first['record'],
                                              second['record']])
        self.assertEqual(['recovered', 'recovered'],
                         [first['state'], second['state']])
        self.assertEqual(['blockJobAbort', 'rmtree', 'delete', 'defineXML',
                          'rmtree', 'delete'], self._changes())
        self.assertEqual([], journal.paths())

    def test_snapshot_beginning_during_recovery_is_not_overrun(self):
        # A snapshot of the instance begins after the attempt looked.
        self._dead_record()
        effect = self.domain.mock.blockJobInfo.side_effect

        def job_info(*args):
            if not journal.held(os.path.join(self.journal_dir,
                                             NEW_IMAGE + '.json')):
                self._live_record()
            return effect(*args)
        self.domain.mock.blockJobInfo.side_effect = job_info

        report, = [r for r in self._recover() if r['record'] == self.path]

        self.assertNotIn('blockJobAbort', self._changes())
        self.assertNotIn('defineXML', self._changes())
        self.assertEqual('incomplete', report['state'])

    # --- only an unchanged definition -------------------------------------

    def test_transient_domain_renamed_is_not_redefined(self):
        self.domain.job = None
        self._dead_record()
        self.domain.mock.name.return_value = 'instance-00000099'

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        saved = os.path.join(self.snapshots_dir,
                             base.INSTANCE_UUID + '.xml')
        problem, = report['problems']
        self.assertIn('the domain changed since the snapshot began (it is '
                      'named instance-00000099 now, not instance-00000001)',
                      problem)
        self.assertIn("'virsh define %s'" % saved, problem)
        # The saved XML, for the operator to define it from; 0600.
        with open(saved) as f:
            self.assertEqual(self.saved_xml, f.read())
        self.assertEqual(0o600, stat.S_IMODE(os.stat(saved).st_mode))
        self.assertEqual('incomplete', report['state'])
        self.assertEqual(['redefine the domain instance-00000001 from its '
                          'saved XML'], report['pending'])
        # The rest is done.
        self.assertEqual(['rmtree', 'delete'], self._changes())

    def test_transient_domain_with_another_disk_is_not_redefined(self):
        # Someone pivoted the disk onto another file since.
        self.domain.job = None
        self._dead_record(disk_path=self.disk + '.old')

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertIn('its disk vda is %s now, not %s.old'
                      % (self.disk, self.disk), report['problems'][0])

    def test_saved_xml_of_another_domain_is_never_defined(self):
        del self.conn.domains[base.INSTANCE_UUID]
        self._dead_record(xml=self.saved_xml.replace(base.INSTANCE_UUID,
                                                     OTHER_UUID))

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertIn('the saved XML is of domain %s' % OTHER_UUID,
                      report['problems'][0])

    def test_domain_gone_with_its_disk_is_not_defined_again(self):
        del self.conn.domains[base.INSTANCE_UUID]
        os.unlink(self.disk)
        self._dead_record()

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertEqual(['the domain is gone and so is its disk %s (the '
                          'instance was deleted): not defined again'
                          % self.disk], report['left_alone'])
        self.assertEqual('recovered', report['state'])

    def test_transient_domain_past_the_capture_is_not_ours(self):
        # The snapshot redefined it before extracting: someone else made it
        # transient since.
        self.domain.job = None
        self._dead_record(phase='uploading')

        report, = self._recover()

        self.conn.mock.defineXML.assert_not_called()
        self.assertEqual(['the domain is transient, but the snapshot did '
                          'not leave it so (phase uploading): not ours to '
                          'redefine'], report['left_alone'])
        self.assertEqual('recovered', report['state'])

    def test_domain_not_undefined_yet_is_not_defined(self):
        self.domain.job = None
        self._dead_record(phase='planned')

        self._recover()

        self.conn.mock.defineXML.assert_not_called()

    def test_transient_domain_with_a_job_not_ours_waits(self):
        self.domain.mirror_path = '/var/lib/elsewhere/copy.qcow2'
        self._dead_record()

        report, = self._recover()

        self.assertNotIn('defineXML', self._changes())
        self.assertEqual(['redefine the domain instance-00000001 from its '
                          'saved XML'], report['pending'])
        self.assertIn('a block job that is not ours runs on vda',
                      report['problems'][0])

    def test_definition_accepted_yet_still_transient_keeps_the_record(self):
        self.domain.job = None
        self.conn.mock.defineXML.side_effect = lambda xml: self.domain.mock
        self._dead_record()

        report, = self._recover()

        self.assertEqual('incomplete', report['state'])
        self.assertIn('libvirt accepted the definition, yet the domain is '
                      'still transient', report['problems'][0])
        self.assertNotIn('redefined the domain instance-00000001 from its '
                         'saved XML', report['actions'])

    # --- a record is kept until all of it is done -------------------------

    def test_glance_unreachable_keeps_the_record_until_the_image_is_gone(self):
        self.image_api.delete.side_effect = \
            nova_exception.GlanceConnectionFailed(server='glance:9292',
                                                  reason='refused')
        self._dead_record()

        report, = self._recover()

        self.assertEqual(('incomplete', ['delete image %s (left queued)'
                                         % base.IMAGE_ID], 1),
                         (report['state'], report['pending'],
                          report['attempts']))
        self.assertEqual({'attempts': 1, 'pending': report['pending'],
                          'last_error': None},
                         {k: v for k, v in self._stored()['recovery'].items()
                          if k != 'last_attempt_at'})
        # The lock is let go for the next attempt.
        self.assertFalse(journal.held(self.path))

        self.image_api.delete.side_effect = None
        self._record_event(self.image_api, 'delete')
        self.events = []
        report, = self._recover()

        # Only what was left is done.
        self.assertEqual(['delete'], self._changes())
        self.assertEqual(('recovered', 2), (report['state'],
                                            report['attempts']))
        self._assert_record_gone()

    def test_each_attempt_is_counted_a_dry_run_is_not(self):
        self.image_api.get.side_effect = \
            nova_exception.GlanceConnectionFailed(server='glance:9292',
                                                  reason='refused')
        self._dead_record()

        self.assertEqual([1, 2, 2, 3], [
            self._recover(dry_run=dry)[0]['attempts']
            for dry in (False, False, True, False)])
        self.assertEqual(3, self._stored()['recovery']['attempts'])

    def test_failed_attempt_is_counted_with_its_error(self):
        self.domain.mock.isActive.side_effect = base.libvirt_error(
            libvirt.VIR_ERR_INTERNAL_ERROR, 'connection reset')
        self._dead_record()

        report, = self._recover()

        self.assertEqual('failed', report['state'])
        recovery_note = self._stored()['recovery']
        self.assertEqual((1, 'connection reset'), (
            recovery_note['attempts'], recovery_note['last_error']))

    def test_temp_dir_that_cannot_be_removed_keeps_the_record(self):
        recovery.shutil.rmtree.side_effect = PermissionError(
            13, 'Permission denied')
        self._dead_record()

        report, = self._recover()

        self.assertEqual(['delete %s' % self.work_dir], report['pending'])
        self.assertTrue(os.path.exists(self.path))

    # --- files that belong to no record -----------------------------------

    def _saved_xml_file(self, uuid=base.INSTANCE_UUID):
        os.makedirs(self.snapshots_dir, exist_ok=True)
        path = os.path.join(self.snapshots_dir, uuid + '.xml')
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, 'w') as f:
            f.write(self.saved_xml)
        return path

    def test_saved_xml_of_a_repaired_domain_goes_with_its_record(self):
        # The rebase case: a redefine failed and saved the XML, the
        # record was kept; recovery redefines and deletes both.
        saved = self._saved_xml_file()
        self._dead_record()

        record_report, file_report = self._recover()

        self.assertEqual('recovered', record_report['state'])
        self.assertEqual(
            {'record': None, 'file': saved, 'state': 'deleted',
             'instance_uuid': base.INSTANCE_UUID, 'problems': [],
             'actions': ['deleted %s: its domain is persistent again and '
                         'no record needs it' % saved]}, file_report)
        self.assertEqual([], os.listdir(self.snapshots_dir))

    def test_saved_xml_a_record_still_names_is_kept(self):
        saved = self._saved_xml_file()
        self.domain.persistent = True
        self.domain.job = None
        self._dead_record(phase='extracting')
        self.image_api.delete.side_effect = nova_exception.Forbidden('no')

        reports = self._recover()

        self.assertEqual(['incomplete'], [r['state'] for r in reports])
        self.assertTrue(os.path.exists(saved))

    def test_saved_xml_of_a_transient_or_gone_domain_is_kept(self):
        saved = self._saved_xml_file()
        gone = self._saved_xml_file(OTHER_UUID)

        reports = self._recover()

        self.assertEqual([(gone, 'kept'), (saved, 'kept')],
                         [(r['file'], r['state']) for r in reports])
        self.assertIn('domain %s is gone' % OTHER_UUID,
                      reports[0]['problems'][0])
        self.assertIn("domain %s is transient and no record repairs it; "
                      "check it and define it ('virsh define %s')"
                      % (base.INSTANCE_UUID, saved),
                      reports[1]['problems'][0])
        self.assertTrue(os.path.exists(saved))
        self.assertTrue(os.path.exists(gone))

    def test_saved_xml_dry_run_and_other_files_are_left(self):
        self.domain.persistent = True
        saved = self._saved_xml_file()
        base.make_raw(os.path.join(self.snapshots_dir, 'notes.xml'))

        report, = self._recover(dry_run=True)

        self.assertEqual(('dry run', saved), (report['state'],
                                              report['file']))
        self.assertTrue(os.path.exists(saved))
        report, = self._recover()
        self.assertFalse(os.path.exists(saved))
        self.assertTrue(os.path.exists(os.path.join(self.snapshots_dir,
                                                    'notes.xml')))

    def test_saved_xml_is_kept_while_a_record_is_unreadable(self):
        self.domain.persistent = True
        saved = self._saved_xml_file()
        self._truncate(self._dead_record(image_id=OTHER_IMAGE))

        self.assertEqual(['corrupt'], [r['state'] for r in self._recover()])
        self.assertTrue(os.path.exists(saved))

    def _journal_temp(self, name, age):
        os.makedirs(self.journal_dir, exist_ok=True)
        path = os.path.join(self.journal_dir, name)
        base.make_raw(path, b'{"half": ', size=9)
        then = time.time() - age
        os.utime(path, (then, then))
        return path

    def test_stray_journal_temp_files_are_deleted(self):
        old = self._journal_temp('.tmp-%s.json-abc123' % OTHER_IMAGE, 3600)
        young = self._journal_temp('.tmp-%s.json-def456' % OTHER_IMAGE, 5)

        report, = self._recover()

        self.assertEqual(
            {'record': None, 'file': old, 'state': 'deleted',
             'problems': [],
             'actions': ['deleted %s, left by an interrupted journal write'
                         % old]}, report)
        self.assertFalse(os.path.exists(old))
        self.assertTrue(os.path.exists(young))

    def test_journal_temp_file_of_a_snapshot_in_flight_is_kept(self):
        live = self._live_record()
        tmp = self._journal_temp(
            '.tmp-%s-abc123' % os.path.basename(live.path), 3600)

        self.assertEqual(['in flight'], [r['state'] for r in self._recover()])
        self.assertTrue(os.path.exists(tmp))


class ImageContextTestCase(base.TestCase):

    def test_admin_context_authenticated_as_the_service_user(self):
        plugin = self.useFixture(fixtures.MockPatch(
            'keystoneauth1.loading.load_auth_from_conf_options',
            return_value=mock.sentinel.auth)).mock

        context = recovery.image_context()

        self.assertIsInstance(context, nova_context.RequestContext)
        self.assertTrue(context.is_admin)
        self.assertIs(mock.sentinel.auth, context.user_auth_plugin)
        plugin.assert_called_once_with(recovery.CONF, 'service_user')

    def test_no_service_user_still_gives_an_admin_context(self):
        self.useFixture(fixtures.MockPatch(
            'keystoneauth1.loading.load_auth_from_conf_options',
            side_effect=ValueError('no auth_type')))

        context = recovery.image_context()

        self.assertTrue(context.is_admin)
        self.assertIn('No [service_user] credentials to clean up Glance '
                      'images with: no auth_type', self.logs.output)
