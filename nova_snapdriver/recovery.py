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

"""Repair what interrupted snapshots left behind, and only that.

For each journal record whose process is gone (its lock is free), in order:

1. abort a block job or a backup job still running on the disk, if it is
   ours: a mirror (rebase, copy) whose target, or a backup whose target
   (push) or scratch file (pull), lies in the record's work dir, and the
   record's phase is one in which the snapshot could have started it
   (``JOB_PHASES``).  Any other job is someone else's: it is left alone
   and reported;
2. redefine the domain from the saved XML if the snapshot's method
   undefined it (only rebase does: the record's ``persistent`` is false
   for copy and backup) in a phase where it could have (``UNDEFINE_PHASES``)
   and the domain is still transient, or gone, and unchanged (see
   ``_changed``).  A persistent definition is never overwritten: if it
   differs from the saved one, someone changed it since, and theirs wins
   (reported);
3. start a domain the snapshot saved (``[workarounds]
   disable_libvirt_livesnapshot``, ``suspend``): only if the record says
   it may have saved it (``saved``) and the domain is shut off with a
   managed-save image.  libvirt restores it from there, running or paused
   as it was.  nova's own start after a snapshot also attaches again the
   PCI devices and direct ports it detached for the save; recovery, which
   runs without nova's driver, does not (an instance with such devices
   needs a hard reboot to get them back);
4. delete the temp files, unless a job of ours still writes into them;
5. delete the Glance image if it was left ``queued`` or ``saving``;
6. remove the record, once nothing is left to do.

While another snapshot of the same instance is in flight (its record is
held by a live process), the domain is left alone (no abort, no redefine):
that snapshot owns it now.  What is the stale record's own (its temp files
unless a job of ours writes into them, its image) is still cleaned.

A repair that could not be done (deferred, refused, Glance unreachable)
keeps the record, with ``recovery``: the number of attempts, what is still
to do and the last error (``nova-snapdriver-manage status`` shows them).
Each step checks the state before it acts, so running recovery again is
safe, and after a full run there is nothing left to do.  A record that is
truncated or corrupt is reported and skipped, never fatal.

After the records: ``<snapshots_directory>/<uuid>.xml`` files (a domain's
saved definition, written when a redefine failed; mode 0600, it can hold
secrets) are deleted once no record names their instance and the domain
is persistent again, and temp files of interrupted journal writes are
deleted (``journal.stray_temp_files``).
"""

import os
import re
import shutil
import time
from xml.etree import ElementTree

from keystoneauth1 import loading as ks_loading
import libvirt
from nova.conf import service_token
from nova import context as nova_context
from nova import exception as nova_exception
from oslo_config import cfg
from oslo_log import log as logging

from nova_snapdriver import blockjob
from nova_snapdriver import journal

CONF = cfg.CONF
LOG = logging.getLogger(__name__)

LEFTOVER_IMAGE_STATES = ('queued', 'saving', 'importing', 'uploading')
# Phases in which a snapshot may have a job of its own running.  'planned'
# too: a backup starts (backupBegin) before its 'backup' step, a copy
# (blockCopy) in the 'overlay' phase, a rebase copy in 'undefined' (or
# 'overlay' when the domain was transient already).  A stream's pull
# backup runs from its first 'streaming' step to the end of the upload.
JOB_PHASES = ('planned', 'overlay', 'undefined', 'copying', 'backup',
              'streaming')
# Phases in which a rebase may have undefined the domain: it undefines
# after its 'overlay' step and redefines before its capture returns.
UNDEFINE_PHASES = ('overlay', 'undefined', 'copying')
SAVED_XML = re.compile(r'^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.xml$')


def _canonical(xml):
    """The XML with formatting differences removed, for comparing."""
    return ElementTree.canonicalize(xml, strip_text=True)


def image_context():
    """An admin context that can talk to Glance without a user's request.

    Recovery runs on behalf of no user, so, as nova-manage does, it
    authenticates as nova's service user (``[service_user]`` in
    nova.conf).  Without one, Glance may refuse; the leftover image is then
    reported instead of deleted.
    """
    context = nova_context.get_admin_context()
    try:
        # keystoneauth's own loader: what nova 33 and 34 wrap as
        # service_auth.get_service_auth_plugin, which 31 and 32 lack.
        context.user_auth_plugin = ks_loading.load_auth_from_conf_options(
            CONF, service_token.SERVICE_USER_GROUP)
    except Exception as e:
        LOG.warning('No [service_user] credentials to clean up Glance '
                    'images with: %s', e)
    return context


def _lookup(conn, uuid):
    try:
        return conn.lookupByUUIDString(uuid)
    except libvirt.libvirtError as e:
        if e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return None
        raise


def _inside(path, directory):
    """True if ``path`` names a file in ``directory`` (or below it)."""
    if not path or not directory:
        return False
    for norm in (os.path.normpath, os.path.realpath):
        a, d = norm(path), norm(directory)
        if os.path.commonpath([a, d]) == d:
            return True
    return False


def undeletable(work_dir):
    """Why recovery must not delete ``work_dir``, or None if it may.

    Only a real directory inside ``[libvirt] snapshots_directory`` (by its
    real path, not the directory itself) is a snapshot's work dir.
    """
    top = os.path.realpath(CONF.libvirt.snapshots_directory)
    if os.path.islink(work_dir):
        return 'it is a symbolic link'
    real = os.path.realpath(work_dir)
    if real == top or os.path.commonpath([real, top]) != top:
        return ('it is not inside [libvirt] snapshots_directory (%s)'
                % top)
    if not os.path.isdir(real):
        return 'it is not a directory'
    return None


def _disk_element(xml, dev):
    for disk in ElementTree.fromstring(xml).findall('./devices/disk'):
        target = disk.find('target')
        if target is not None and target.get('dev') == dev:
            return disk
    return None


def _mirror_target(dom, dev):
    """The file a copy job on ``dev`` writes into; None if none is named."""
    disk = _disk_element(dom.XMLDesc(0), dev)
    mirror = disk.find('mirror') if disk is not None else None
    if mirror is None:
        return None
    source = mirror.find('source')
    if source is not None and source.get('file'):
        return source.get('file')
    return mirror.get('file')


def _disk_source(xml, dev):
    disk = _disk_element(xml, dev)
    source = disk.find('source') if disk is not None else None
    if source is None:
        return None
    return source.get('file') or source.get('dev') or source.get('name')


class _Repair(object):
    """One recovery attempt of one record: what it did and what is left."""

    def __init__(self, conn, rec, image_api, context, dry_run):
        self.conn = conn
        self.rec = rec
        self.data = rec.data
        self.image_api = image_api
        self.context = context
        self.dry_run = dry_run
        self.actions = []    # done (or, in a dry run, would be done)
        self.problems = []   # why something was not done; the operator's
        self.pending = []    # what is still to do: keeps the record
        self.left_alone = []  # what is not ours, untouched
        self.name = self.data.get('instance_name') or \
            self.data['instance_uuid']
        self.job_writes_work_dir = False

    def run(self):
        self.live = self._in_flight()
        dom = _lookup(self.conn, self.data['instance_uuid'])
        if dom is not None and dom.isActive():
            foreign_job = self._jobs(dom)
        else:
            foreign_job = None
        self._definition(dom, foreign_job)
        self._saved_guest(dom)
        self._temp_files()
        self._image()

    # --- which snapshots of the instance are in flight --------------------

    def _in_flight(self):
        """Other records of this instance held by a live process."""
        found = []
        for path in journal.paths():
            if path == self.rec.path:
                continue
            try:
                other = journal.load(path)
            except journal.CorruptRecord:
                continue
            if other.data['instance_uuid'] != self.data['instance_uuid']:
                continue
            if journal.held(path):
                found.append(other)
        return found

    def _defer(self, what):
        """Leave the domain to a snapshot in flight: True if there is one.

        Asked again right before each change: a snapshot may have begun
        since the attempt did.
        """
        live = self.live if self.dry_run else self._in_flight()
        if not live:
            return False
        other = live[0]
        self.pending.append(what)
        self.problems.append(
            'not done: %s: snapshot %s of the same instance is in flight '
            '(pid %s, phase %s) and owns the domain now; run recover again '
            'once it is done' % (what, other.image_id,
                                 other.data.get('pid'), other.phase))
        return True

    # --- 1. jobs ----------------------------------------------------------

    def _ours(self, path):
        return _inside(path, self.data['work_dir'])

    def _jobs(self, dom):
        """Abort the jobs of ours; returns a sentence if a foreign one runs.

        Sets ``job_writes_work_dir`` when a job of ours is still running.
        """
        dev = self.data.get('disk_dev')
        foreign = None
        backup = False
        if blockjob.backup_running(dom):
            backup = True
            targets = blockjob.backup_files(dom, dev) if dev else []
            what = 'abort the backup job of %s' % self.name
            if any(self._ours(t) for t in targets):
                self._abort(what, 'aborted the backup job of %s' % self.name,
                            lambda: blockjob.abort_backup(dom),
                            "virsh domjobabort %s" % self.name)
            else:
                foreign = ('a backup job that is not ours runs on %s '
                           '(writing into %s)'
                           % (self.name, ', '.join(targets) or 'no file'))
                self.left_alone.append(foreign)
        if not dev:
            return foreign
        try:
            job = dom.blockJobInfo(dev, 0)
        except libvirt.libvirtError:
            job = {}
        if not job:
            return foreign
        target = _mirror_target(dom, dev)
        if backup and (target is None or job.get('type') ==
                       libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_BACKUP):
            return foreign  # the backup above, as libvirt lists it
        if self._ours(target):
            self._abort('abort the block job on %s' % dev,
                        'aborted the block job on %s' % dev,
                        lambda: dom.blockJobAbort(dev, 0),
                        'virsh blockjob %s %s --abort' % (self.name, dev))
            return foreign
        foreign = ('a block job that is not ours runs on %s (%s)'
                   % (dev, 'mirror into %s' % target if target
                      else 'no mirror of ours'))
        self.left_alone.append(foreign)
        return foreign

    def _abort(self, what, done, abort, command):
        if self.rec.phase not in JOB_PHASES:
            # Past the capture, the snapshot no longer owns a job: this
            # one cannot be its (yet it writes into its work dir).
            self.job_writes_work_dir = True
            self.pending.append(what)
            self.problems.append(
                'not done: %s: it writes into %s, yet the snapshot was past '
                "its capture (phase %s); check it, abort it ('%s') and run "
                'recover again' % (what, self.data['work_dir'],
                                   self.rec.phase, command))
            return
        if self._defer(what):
            self.job_writes_work_dir = True
            return
        self.actions.append(done)
        if not self.dry_run:
            abort()

    # --- 2. the definition ------------------------------------------------

    def _definition(self, dom, foreign_job):
        data = self.data
        if not data.get('persistent') or not data.get('xml'):
            return
        if self.rec.phase not in UNDEFINE_PHASES:
            # Not undefined yet ('planned'), or redefined already: a
            # capture returns only once the domain is persistent again.
            if dom is not None and not dom.isPersistent():
                self.left_alone.append(
                    'the domain is transient, but the snapshot did not '
                    'leave it so (phase %s): not ours to redefine'
                    % self.rec.phase)
            return
        if dom is not None and dom.isPersistent():
            current = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE |
                                  libvirt.VIR_DOMAIN_XML_SECURE)
            if _canonical(current) != _canonical(data['xml']):
                self.problems.append(
                    'the domain is persistent with a definition that '
                    'changed since the snapshot began; left as it is')
            return
        what = 'redefine the domain %s from its saved XML' % self.name
        if dom is None and data.get('disk_path') and \
                not os.path.exists(data['disk_path']):
            self.left_alone.append(
                'the domain is gone and so is its disk %s (the instance '
                'was deleted): not defined again' % data['disk_path'])
            return
        if self._defer(what):
            return
        if foreign_job:
            self.pending.append(what)
            self.problems.append(
                'not done: %s: %s; run recover again once it is over'
                % (what, foreign_job))
            return
        changed = self._changed(dom)
        if changed:
            self.pending.append(what)
            path = self._save_xml()
            self.problems.append(
                'not done: %s: the domain changed since the snapshot began '
                '(%s); if it must be persistent, check the saved XML and '
                "define it ('virsh define %s'), then run recover again"
                % (what, changed, path))
            return
        self.actions.append('redefined the domain %s from its saved XML'
                            % self.name)
        if self.dry_run:
            return
        self.conn.defineXML(data['xml'])
        dom = _lookup(self.conn, data['instance_uuid'])
        if dom is not None and not dom.isPersistent():
            self.actions.pop()
            self.pending.append(what)
            self.problems.append('not done: %s: libvirt accepted the '
                                 'definition, yet the domain is still '
                                 'transient' % what)

    def _changed(self, dom):
        """How the domain differs from the snapshot's; None if it does not.

        The definition "changed" when redefining from the saved XML would
        replace something else than what the snapshot undefined: the saved
        XML is another domain's (UUID), the domain has another name, or
        its disk is no longer the file the snapshot recorded (someone
        pivoted or swapped it).  The live XML's runtime details (ids,
        aliases, ports) are no change.
        """
        data = self.data
        saved = ElementTree.fromstring(data['xml'])
        uuid = saved.findtext('uuid')
        if uuid != data['instance_uuid']:
            return 'the saved XML is of domain %s' % uuid
        if dom is None:
            return None
        if dom.UUIDString() != uuid:
            return 'its UUID is %s' % dom.UUIDString()
        if dom.name() != saved.findtext('name'):
            return 'it is named %s now, not %s' % (
                dom.name(), saved.findtext('name'))
        if data.get('disk_dev') and data.get('disk_path'):
            source = _disk_source(dom.XMLDesc(0), data['disk_dev'])
            if source != data['disk_path']:
                return 'its disk %s is %s now, not %s' % (
                    data['disk_dev'], source, data['disk_path'])
        return None

    def _save_xml(self):
        """The saved XML where the operator can define it from (0600)."""
        path = os.path.join(CONF.libvirt.snapshots_directory,
                            '%s.xml' % self.data['instance_uuid'])
        if self.dry_run or os.path.exists(path):
            return path
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as f:
                f.write(self.data['xml'])
        except OSError as e:
            LOG.warning('Could not save the XML to %s: %s', path, e)
        return path

    # --- 3. a guest the snapshot saved --------------------------------------

    def _saved_guest(self, dom):
        """Start a domain the snapshot left saved (managed save)."""
        if not self.data.get('saved') or dom is None or dom.isActive():
            return
        if not dom.hasManagedSaveImage(0):
            self.left_alone.append(
                'the domain %s is shut off with no saved state: the '
                'snapshot did not leave it so, not started' % self.name)
            return
        what = 'start the domain %s from its managed save' % self.name
        if self._defer(what):
            return
        self.actions.append('started the domain %s from the state the '
                            'snapshot saved' % self.name)
        if self.dry_run:
            return
        try:
            dom.create()  # restores the saved state, running or paused
        except libvirt.libvirtError as e:
            self.actions.pop()
            self.pending.append(what)
            self.problems.append("not done: %s: %s; check it and start it "
                                 "('virsh start %s'), then run recover "
                                 "again" % (what, e, self.name))

    # --- 4. temp files ----------------------------------------------------

    def _temp_files(self):
        work_dir = self.data['work_dir']
        if not os.path.lexists(work_dir):
            return
        what = 'delete %s' % work_dir
        refused = undeletable(work_dir)
        if refused:
            # A record names the directory to delete, and recovery may run
            # as root: never anything outside the snapshots directory.
            self.problems.append('not done: %s: %s; delete it by hand if '
                                 'it is a snapshot\'s' % (what, refused))
            return
        if self.job_writes_work_dir:
            self.pending.append(what)
            self.problems.append('not done: %s: a job of the snapshot '
                                 'still writes into it' % what)
            return
        self.actions.append('deleted %s' % work_dir)
        if self.dry_run:
            return
        try:
            shutil.rmtree(work_dir)
        except OSError as e:
            self.actions.pop()
            self.pending.append(what)
            self.problems.append('not done: %s: %s' % (what, e))

    # --- 5. the image -----------------------------------------------------

    def _image(self):
        image_id = self.rec.image_id
        if self.image_api is None:
            # Not asked to look after images (only tests call it so).
            self.problems.append('image %s may be left queued: no image '
                                 'service to check it with' % image_id)
            return
        what = 'delete image %s' % image_id
        try:
            image = self.image_api.get(self.context, image_id)
        except nova_exception.ImageNotFound:
            return
        except Exception as e:
            self.pending.append(what + ' if it is left queued')
            self.problems.append(
                "could not check image %s (%s); if it is still queued, "
                "delete it with 'openstack image delete %s'"
                % (image_id, e, image_id))
            return
        if image.get('status') not in LEFTOVER_IMAGE_STATES:
            return
        self.actions.append('deleted image %s left %s'
                            % (image_id, image['status']))
        if self.dry_run:
            return
        try:
            self.image_api.delete(self.context, image_id)
        except nova_exception.ImageNotFound:
            pass
        except Exception as e:
            self.actions.pop()
            self.pending.append('%s (left %s)' % (what, image['status']))
            self.problems.append(
                "image %s is left %s and could not be deleted (%s); delete "
                "it with 'openstack image delete %s'"
                % (image_id, image['status'], e, image_id))


def _note_attempt(rec, **fields):
    """Write the attempt count and what is left into the record."""
    note = dict(rec.recovery, **fields)
    rec.update(recovery=note)


def recover_one(conn, path, image_api=None, context=None, dry_run=False):
    """Repair one record; returns a report dict (see ``recover``)."""
    report = {'record': path, 'actions': [], 'problems': [],
              'image_id': os.path.basename(path)[:-len('.json')]}
    lock_fd = journal.try_lock(path)
    if lock_fd is None:
        report['state'] = 'in flight'
        return report
    rec = None
    try:
        if not os.path.exists(path):
            # Its snapshot finished between listing and locking.
            journal.discard_lock(path)
            report['state'] = 'finished'
            return report
        try:
            rec = journal.load(path)
        except journal.CorruptRecord as e:
            report['state'] = 'corrupt'
            report['problems'].append(str(e))
            LOG.error('Skipping a corrupt snapshot journal record: %s', e)
            return report
        attempts = rec.recovery.get('attempts', 0) + (0 if dry_run else 1)
        report.update(instance_uuid=rec.data['instance_uuid'],
                      image_id=rec.image_id, phase=rec.phase,
                      attempts=attempts, pending=[], left_alone=[])
        if not dry_run:
            # Counted before anything is done: an attempt that dies
            # half-way counts too.
            _note_attempt(rec, attempts=attempts,
                          last_attempt_at=time.time())
        repair = _Repair(conn, rec, image_api, context, dry_run)
        repair.run()
        report.update(actions=repair.actions, problems=repair.problems,
                      pending=repair.pending, left_alone=repair.left_alone)
        _log(rec, repair, dry_run)
        if dry_run:
            report['state'] = 'dry run'
        elif repair.pending:
            report['state'] = 'incomplete'
            _note_attempt(rec, pending=repair.pending, last_error=None)
        else:
            report['state'] = 'recovered'
            rec.remove()
    except Exception as e:
        LOG.exception('Recovering snapshot journal record %s failed', path)
        report['state'] = 'failed'
        report['problems'].append(str(e))
        if rec is not None and not dry_run:
            try:
                _note_attempt(rec, last_error=str(e))
            except Exception:
                LOG.exception('Could not note the failure in %s', path)
    finally:
        os.close(lock_fd)
    return report


def _log(rec, repair, dry_run):
    what = {'image': rec.image_id, 'phase': rec.phase,
            'dry': ' (dry run: not done)' if dry_run else ''}
    uuid = rec.data['instance_uuid']
    for action in repair.actions:
        LOG.info('Recovery of snapshot %(image)s interrupted in phase '
                 '%(phase)s: %(action)s%(dry)s', dict(what, action=action),
                 instance_uuid=uuid)
    for note in repair.left_alone:
        LOG.info('Recovery of snapshot %(image)s: left alone: %(note)s',
                 dict(what, note=note), instance_uuid=uuid)
    for problem in repair.problems:
        LOG.warning('Recovery of snapshot %(image)s: %(problem)s',
                    dict(what, problem=problem), instance_uuid=uuid)
    if repair.pending and not dry_run:
        LOG.warning('Recovery of snapshot %(image)s is not complete; its '
                    'journal record %(record)s is kept (still to do: '
                    '%(pending)s)', dict(what, record=rec.path,
                                         pending='; '.join(repair.pending)),
                    instance_uuid=uuid)


# --- files that belong to no record ---------------------------------------

def _recorded_instances():
    """The instances the records left in the journal name (None: unsure)."""
    found = set()
    for path in journal.paths():
        try:
            found.add(journal.load(path).data['instance_uuid'])
        except journal.CorruptRecord:
            if os.path.exists(path):
                return None  # it may name any instance
    return found


def _saved_xml_files(conn, dry_run):
    """Delete saved domain XML no record needs, once its domain is back.

    ``<uuid>.xml`` in the snapshots directory is a domain's definition,
    secrets included, saved when a redefine failed.  It is deleted once no
    record names that instance (a record's repair may still need it) and
    the domain is persistent again.  One whose domain is transient or gone
    is kept, and reported: it is what the operator defines it from.
    """
    directory = CONF.libvirt.snapshots_directory
    try:
        names = sorted(n for n in os.listdir(directory)
                       if SAVED_XML.match(n))
    except FileNotFoundError:
        return []
    if not names:
        return []
    recorded = _recorded_instances()
    reports = []
    for name in names:
        uuid = name[:-len('.xml')]
        path = os.path.join(directory, name)
        if recorded is None or uuid in recorded:
            continue
        report = {'record': None, 'file': path, 'instance_uuid': uuid,
                  'actions': [], 'problems': []}
        dom = _lookup(conn, uuid)
        if dom is not None and dom.isPersistent():
            report['actions'].append('deleted %s: its domain is persistent '
                                     'again and no record needs it' % path)
            if not dry_run:
                _unlink(path)
            report['state'] = 'dry run' if dry_run else 'deleted'
        else:
            report['problems'].append(
                "%s is kept: domain %s is %s and no record repairs it; "
                "check it and define it ('virsh define %s'), then run "
                "recover again"
                % (path, uuid, 'gone' if dom is None else 'transient',
                   path))
            report['state'] = 'kept'
        reports.append(report)
    return reports


def _journal_temp_files(dry_run):
    reports = []
    for path in journal.stray_temp_files():
        report = {'record': None, 'file': path, 'actions': [],
                  'problems': [],
                  'state': 'dry run' if dry_run else 'deleted'}
        report['actions'].append('deleted %s, left by an interrupted '
                                 'journal write' % path)
        if not dry_run:
            _unlink(path)
        reports.append(report)
    return reports


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _newest_first(path):
    """Sort key: the latest snapshot is undone first, as on a stack.

    Two records of one instance: the newer snapshot's job is the one on
    the disk now and its cleanup must come before the older one's
    redefine (which waits while a job that is not its own runs).
    """
    try:
        return -journal.load(path).data.get('started_at', 0)
    except journal.CorruptRecord:
        return 0


def recover(conn, image_api=None, context=None, dry_run=False):
    """Repair every record left by a dead process; one report per record.

    Records are repaired newest snapshot first (``_newest_first``); the
    reports come in the journal's order (oldest first).

    Each report is a dict: ``record`` (its path), ``state`` ('recovered',
    'incomplete' (kept: something is still to do), 'dry run', 'in
    flight', 'corrupt', 'failed' or 'finished'), ``actions``,
    ``problems`` and, for a readable record, ``left_alone`` (lists of
    sentences: done, not done and why, not ours), ``pending`` (what is
    still to do), ``attempts``, ``instance_uuid``, ``image_id`` and
    ``phase``.

    Then one report per file that belongs to no record (``record`` None,
    ``file`` its path, ``state`` 'deleted', 'kept' or 'dry run'): saved
    domain XML and stray journal temp files.
    """
    paths = journal.paths()
    done = {path: recover_one(conn, path, image_api, context, dry_run)
            for path in sorted(paths, key=_newest_first)}
    reports = [done[path] for path in paths]
    for sweep in (lambda: _saved_xml_files(conn, dry_run),
                  lambda: _journal_temp_files(dry_run)):
        try:
            reports += sweep()
        except Exception as e:
            LOG.exception('Cleaning files that belong to no snapshot '
                          'record failed')
            reports.append({'record': None, 'state': 'failed',
                            'actions': [], 'problems': [str(e)]})
    for report in reports:
        if report.get('file'):
            for action in report['actions']:
                LOG.info('Recovery: %s%s', action,
                         ' (dry run: not done)' if dry_run else '')
            for problem in report['problems']:
                LOG.warning('Recovery: %s', problem)
    return reports
