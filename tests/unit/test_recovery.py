"""recovery: what a dead snapshot left behind is repaired, once, in order.

Records are real journal files (written by ``journal.begin`` and released,
as a dead process leaves them) in the tmp journal; libvirt is a
FakeConnection holding FakeDomains (autospec'd ``virConnect`` and
``virDomain``), Glance an autospec'd image API, temp dirs real files.
"""

import json
import os
import shutil
from unittest import mock

import fixtures
import libvirt

from nova import context as nova_context
from nova import exception as nova_exception
from nova.image import glance

from nova_snapdriver import journal
from nova_snapdriver import recovery
from tests.unit import base

DISK = '/var/lib/nova/instances/%s/disk' % base.INSTANCE_UUID
OTHER_IMAGE = 'decade00-1234-4abc-8def-0123456789ab'
SAVE_FLAGS = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
# Calls that change the domain, the host or the image.
CHANGES = {'blockJobAbort', 'defineXML', 'delete', 'undefine',
           'undefineFlags', 'rmtree'}


def _pretty(xml):
    """The same XML as libvirt would not write it: indented, "-quoted."""
    return xml.replace('><', '>\n    <').replace("'", '"') + '\n'


class RecoveryTestCase(base.TestCase):

    def setUp(self):
        super(RecoveryTestCase, self).setUp()
        # A domain left transient in the middle of its block copy.
        self.domain = base.FakeDomain(base.file_disk_xml(DISK),
                                      persistent=False)
        self.domain.job = {'type': libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COPY,
                           'bandwidth': 0, 'cur': 5, 'end': 10}
        self.domain.mirror = 'yes'
        self.saved_xml = self.domain.xml(SAVE_FLAGS)
        self.conn = base.FakeConnection(self.domain)
        self.image_api = mock.create_autospec(glance.API, instance=True)
        self.image_api.get.return_value = {'id': base.IMAGE_ID,
                                           'status': 'queued'}
        self.work_dir = os.path.join(self.snapshots_dir, base.IMAGE_ID)
        os.makedirs(self.work_dir)
        with open(os.path.join(self.work_dir, 'overlay.qcow2'), 'wb') as f:
            f.write(b'half a copy')
        self.path = os.path.join(self.journal_dir, base.IMAGE_ID + '.json')
        # Everything that changes something, in order, with whether the
        # record still existed then.
        self.events = []
        self._record_event(self.domain.mock, 'blockJobAbort')
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
        fields.setdefault('disk_path', DISK)
        record = base.begin_journal_record(self.snapshots_dir, image_id,
                                           **fields)
        record.release()
        return record.path

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
              'problems': []}], reports)
        self.assertEqual(
            [('blockJobAbort', (base.DISK_DEV, 0), True),
             ('defineXML', (self.saved_xml,), True),
             ('rmtree', (self.work_dir,), True),
             ('delete', (self.context, base.IMAGE_ID), True)], self.events)
        self.image_api.get.assert_called_once_with(self.context,
                                                   base.IMAGE_ID)
        self.conn.mock.lookupByUUIDString.assert_called_once_with(
            base.INSTANCE_UUID)
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
        self.assertEqual('recovered', report['state'])
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


class ImageContextTestCase(base.TestCase):

    def test_admin_context_authenticated_as_the_service_user(self):
        plugin = self.useFixture(fixtures.MockPatch(
            'nova.service_auth.get_service_auth_plugin',
            return_value=mock.sentinel.auth)).mock

        context = recovery.image_context()

        self.assertIsInstance(context, nova_context.RequestContext)
        self.assertTrue(context.is_admin)
        self.assertIs(mock.sentinel.auth, context.user_auth_plugin)
        plugin.assert_called_once_with('service_user')

    def test_no_service_user_still_gives_an_admin_context(self):
        self.useFixture(fixtures.MockPatch(
            'nova.service_auth.get_service_auth_plugin',
            side_effect=ValueError('no auth_type')))

        context = recovery.image_context()

        self.assertTrue(context.is_admin)
        self.assertIn('No [service_user] credentials to clean up Glance '
                      'images with: no auth_type', self.logs.output)
