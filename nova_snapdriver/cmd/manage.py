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

"""nova-snapdriver-manage: the operator's view of snapshots on this host.

    nova-snapdriver-manage [--config-file F] [--json] status
    nova-snapdriver-manage [--config-file F] [--json] recover [--dry-run]
    nova-snapdriver-manage [--config-file F] [--json] check
    nova-snapdriver-manage [--config-file F] [--json] purge
    nova-snapdriver-manage reexport [--remove]

``status`` lists the snapshots in flight (or left by a dead process) with
their phase and progress, and for a record recovery kept, its attempts and
what is still to do.  ``recover`` repairs what interrupted snapshots left
behind, exactly as nova-compute does when it starts, and only that: jobs
and domains of snapshots in flight, and jobs that are not ours, are left
alone.  ``check`` tells
whether this host can run the driver, as the user it runs as (run it as
nova-compute's user): ``compute_driver``, the driver imported as
nova-compute imports it, versions, features, the image cache and snapshots
directories, a snapshot's qemu-img command lines run for real on a scratch
chain, that no root command is needed (and no stale rootwrap filters of an
earlier release are installed), free space and the journal's
permissions.  ``purge`` removes the driver's own state from the host (the
journal and work directories left without a record), for a host going
back to nova's in-tree driver, and refuses while a snapshot is in flight
or still to repair.  ``reexport`` writes the driver's ``nova.virt.snapdriver``
into nova's own package directory, for a nova from distribution packages
(``reexport``); ``--remove`` takes it away.  Exit status: 0 when all is
well, 1 when something needs the operator.
"""

import argparse
import json
import os
import pwd
import shutil
import sys
import tempfile
import time
import warnings

# nova's dependencies warn about eventlet on import; not the operator's
# business on this command's terminal.
warnings.simplefilter('ignore', DeprecationWarning)

import libvirt  # noqa: E402
from nova import config as nova_config  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402
from nova import objects  # noqa: E402
from oslo_config import cfg  # noqa: E402

from nova_snapdriver import chain  # noqa: E402
from nova_snapdriver import conf  # noqa: F401,E402  (registers options)
from nova_snapdriver import journal  # noqa: E402
from nova_snapdriver import plan as snapshot_plan  # noqa: E402
from nova_snapdriver import progress  # noqa: E402
from nova_snapdriver import qemu_img  # noqa: E402
from nova_snapdriver import recovery  # noqa: E402
from nova_snapdriver import reexport  # noqa: E402

CONF = cfg.CONF


def _connect():
    return libvirt.open(CONF.libvirt.connection_uri or 'qemu:///system')


def _version(number):
    return '%d.%d.%d' % (number // 1000000, number // 1000 % 1000,
                         number % 1000)


# -- status ---------------------------------------------------------------

def _copy_progress(conn, data):
    try:
        dom = conn.lookupByUUIDString(data['instance_uuid'])
        job = dom.blockJobInfo(data['disk_dev'], 0)
    except (libvirt.libvirtError, KeyError):
        return None
    if not job or not job.get('end'):
        return None
    return 100 * job['cur'] // job['end']


def status(conn):
    rows = []
    for path in journal.paths():
        try:
            rec = journal.load(path)
        except journal.CorruptRecord as e:
            if os.path.exists(path):  # else it just finished
                rows.append({'record': path, 'state': 'corrupt',
                             'problem': str(e)})
            continue
        live = journal.held(path)
        data = rec.data
        row = {'record': path, 'instance_uuid': data['instance_uuid'],
               'image_id': rec.image_id, 'phase': rec.phase,
               'pid': data.get('pid'),
               'age_seconds': int(time.time() - data.get('started_at', 0)),
               'state': 'in flight' if live else
                        'interrupted (run recover)'}
        if rec.phase == 'copying':
            row['progress_percent'] = _copy_progress(conn, data)
        if data.get('size'):
            row['size'] = data['size']
        tried = rec.recovery
        if tried:
            # Recovery kept the record: how often it tried, what is left.
            row['recovery_attempts'] = tried.get('attempts', 0)
            row['pending'] = list(tried.get('pending') or [])
            if tried.get('last_error'):
                row['last_error'] = tried['last_error']
        rows.append(row)
    return rows


def _print_status(rows):
    if not rows:
        print('No snapshot in flight.')
        return
    for row in rows:
        if row['state'] == 'corrupt':
            print('CORRUPT %(record)s: %(problem)s' % row)
            continue
        extra = ''
        if row.get('progress_percent') is not None:
            extra += ', %d%% copied' % row['progress_percent']
        if row.get('size'):
            extra += ', %s image' % progress.human_size(row['size'])
        print('%s image %s of instance %s: phase %s%s, started %ds ago by '
              'pid %s, %s' % ('RUNNING' if row['state'] == 'in flight'
                              else 'STOPPED',
                              row['image_id'], row['instance_uuid'],
                              row['phase'], extra, row['age_seconds'],
                              row['pid'], row['state']))
        if 'recovery_attempts' in row:
            print('  recovery attempts: %d' % row['recovery_attempts'])
            for item in row['pending']:
                print('  still to do: %s' % item)
            if row.get('last_error'):
                print('  last error: %s' % row['last_error'])


# -- recover --------------------------------------------------------------

def recover(conn, dry_run):
    return recovery.recover(conn, nova_glance.API(),
                            recovery.image_context(), dry_run=dry_run)


def _print_recover(reports):
    if not reports:
        print('Nothing to recover.')
    for r in reports:
        attempts = (' (attempt %d)' % r['attempts']
                    if r.get('attempts', 0) > 1 else '')
        print('%s: %s%s' % (r.get('image_id') or r.get('file') or
                            r['record'], r['state'], attempts))
        for action in r['actions']:
            print('  done: %s' % action if r['state'] != 'dry run'
                  else '  would do: %s' % action)
        for note in r.get('left_alone', []):
            print('  left alone: %s' % note)
        for problem in r['problems']:
            print('  PROBLEM: %s' % problem)
        for item in r.get('pending', []) if r['state'] != 'dry run' else []:
            print('  still to do: %s' % item)


# -- purge ----------------------------------------------------------------

def purge():
    """Remove the driver's state, unless a snapshot still needs it.

    A journal record means a snapshot in flight, or one whose repair is
    not done: its record, saved XML and work dir are what recovery needs,
    so nothing is removed.  Otherwise the journal directory and the work
    directories (named as this driver names them) in the snapshots
    directory go.  Run it with nova-compute stopped or on nova's in-tree
    driver: a snapshot of this driver begun meanwhile would lose its dir.
    """
    records = journal.paths()
    if records:
        return {'removed': [], 'refused': (
            '%d snapshot record(s) in %s: %s.  A snapshot is in flight, or '
            'its repair is not done; nothing was removed.  Run '
            '"nova-snapdriver-manage recover" (nova-compute with this '
            'driver runs it too) until "status" shows none, then purge '
            'again.' % (len(records), journal.directory(),
                        ', '.join(os.path.basename(p) for p in records)))}
    removed = []
    snapshots = CONF.libvirt.snapshots_directory
    try:
        names = sorted(os.listdir(snapshots))
    except FileNotFoundError:
        names = []
    doomed = [os.path.join(snapshots, name) for name in names
              if snapshot_plan.WORK_DIR_PATTERN.match(name) and
              os.path.isdir(os.path.join(snapshots, name))]
    if os.path.isdir(journal.directory()):
        doomed.append(journal.directory())
    for path in doomed:
        try:
            shutil.rmtree(path)
        except OSError as e:
            return {'removed': removed, 'refused': (
                'could not remove %s (%s); run purge as nova-compute\'s '
                'user, or as root, and again until it says nothing is '
                'left' % (path, e))}
        removed.append(path)
    return {'removed': removed, 'refused': None}


def _print_purge(result):
    if result['refused']:
        print('Refused: %s' % result['refused'])
        return
    for path in result['removed']:
        print('Removed %s' % path)
    if not result['removed']:
        print('Nothing to purge.')


# -- check ----------------------------------------------------------------

def _check(name, ok, detail, warn=False):
    return {'check': name, 'result': 'OK' if ok else
            ('WARN' if warn else 'FAIL'), 'detail': detail}


def _check_driver():
    """compute_driver, and the driver imported as nova-compute imports it."""
    name = CONF.compute_driver
    results = [_check(
        'compute_driver', name == reexport.DRIVER,
        '[DEFAULT] compute_driver = %s%s' % (
            name, '' if name == reexport.DRIVER else
            ' (set it to %s for nova-compute to use this driver)'
            % reexport.DRIVER))]
    ok, detail = reexport.loads()
    results.append(_check('driver import', ok, detail))
    return results


def _check_features(conn):
    lib, hv = conn.getLibVersion(), conn.getVersion()
    results = [_check('versions', lib >= 8000000 and hv >= 6002000,
                      'libvirt %s, QEMU %s (nova 34 needs libvirt >= 8.0.0 '
                      'and QEMU >= 6.2.0)' % (_version(lib), _version(hv)))]
    results.append(_check(
        'blockRebase copy', hasattr(libvirt, 'VIR_DOMAIN_BLOCK_REBASE_COPY'),
        'virDomainBlockRebase with COPY|REUSE_EXT|SHALLOW'))
    results.append(_check(
        'blockCopy transient job',
        hasattr(libvirt, 'VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB'),
        'virDomainBlockCopy with VIR_DOMAIN_BLOCK_COPY_TRANSIENT_JOB',
        warn=True))
    try:
        caps = conn.getDomainCapabilities(None, None, None, None, 0)
    except libvirt.libvirtError as e:
        caps = str(e)
    backup = ("<backup supported='yes'/>" in caps and
              hasattr(libvirt.virDomain, 'backupBegin'))
    results.append(_check('backup API', backup,
                          'virDomainBackupBegin (push mode)', warn=True))
    return results


def _scratch_chain(directory):
    """A tiny base and disk laid out as nova lays them out, in ``directory``.

    The base is a raw file, the disk a qcow2 over it: the chain a live
    snapshot reads, named as a snapshot names it.
    """
    base = chain.Node(os.path.join(directory, 'base'), 'raw')
    with open(base.path, 'wb') as f:
        f.truncate(1024 * 1024)
    disk = os.path.join(directory, 'disk')
    qemu_img.create_overlay(disk, base, 1024 * 1024)
    return chain.Node(disk, 'qcow2', base)


def _user():
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return 'uid %d' % os.geteuid()


def _check_qemu_img():
    """Run the qemu-img command lines of a snapshot, as this user.

    In a scratch directory inside the snapshots directory: create an
    overlay, info and measure under nova's limits, convert a json: chain.
    That is what a snapshot needs of qemu-img, of prlimit and of this
    user's rights in the snapshots directory.
    """
    where = CONF.libvirt.snapshots_directory
    name = 'qemu-img as %s' % _user()
    try:
        os.makedirs(where, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix='.check-', dir=where) as tmp:
            node = _scratch_chain(tmp)
            qemu_img.info(node)
            qemu_img.measure(node, 'qcow2')
            overlay = os.path.join(tmp, 'overlay.qcow2')
            qemu_img.create_overlay(overlay, node.backing, 1024 * 1024)
            qemu_img.convert(chain.captured(overlay, 'qcow2', node.backing),
                             os.path.join(tmp, 'image'), 'qcow2')
    except Exception as e:
        return _check(name, False, "a snapshot's qemu-img commands failed "
                      'in %s: %s' % (where, e))
    return _check(name, True, 'create, info, measure and convert of a '
                  'json: chain work in %s' % where)


def _check_paths():
    """The directories a snapshot reads and writes, for this user."""
    results = []
    for what, path, mode in (
            ('image cache access', chain.image_cache_dir(),
             os.R_OK | os.X_OK),
            ('snapshots directory access', CONF.libvirt.snapshots_directory,
             os.R_OK | os.W_OK | os.X_OK)):
        need = 'writable' if mode & os.W_OK else 'readable'
        if not os.path.exists(path):
            results.append(_check(what, False, '%s: missing (nova creates '
                                  'it when needed)' % path, warn=True))
            continue
        ok = os.path.isdir(path) and os.access(path, mode)
        results.append(_check(what, ok, '%s: %s%s by %s' % (
            path, '' if ok else 'NOT ', need, _user())))
    return results


def _stale_filters():
    """Installed rootwrap filters of an earlier nova-snapdriver, if any."""
    try:
        from oslo_rootwrap import wrapper
        parser = wrapper.configparser.RawConfigParser()
        parser.read(CONF.rootwrap_config)
        dirs = wrapper.RootwrapConfig(parser).filters_path
    except Exception:
        dirs = [os.path.join(os.path.dirname(CONF.rootwrap_config),
                             'rootwrap.d')]
    return [os.path.join(d, 'snapdriver.filters') for d in dirs
            if os.path.exists(os.path.join(d, 'snapdriver.filters'))]


def _check_rootwrap():
    stale = _stale_filters()
    if stale:
        return _check('no root commands', False,
                      'remove %s: nova-snapdriver runs no command as root '
                      'any more, and these filters let the nova user run '
                      'root qemu-img command lines whose reads a disk '
                      'header can steer' % ', '.join(stale))
    return _check('no root commands', True,
                  'nova-snapdriver needs no rootwrap filters and no '
                  'privsep; none of an earlier release is installed')


def _check_space():
    path = CONF.libvirt.snapshots_directory
    try:
        st = os.statvfs(path)
    except OSError as e:
        return _check('snapshots directory', False, '%s: %s' % (path, e))
    free = st.f_bavail * st.f_frsize
    reserve = CONF.snapdriver.reserved_space_mb * 1024 * 1024
    return _check('snapshots directory', free > reserve,
                  '%s: %s free (reserve %s)' % (
                      path, progress.human_size(free),
                      progress.human_size(reserve)), warn=True)


def _check_state_dir():
    path = journal.directory()
    if not os.path.exists(path):
        return _check('journal directory', True,
                      '%s will be created with mode 0700' % path)
    st = os.stat(path)
    mode = st.st_mode & 0o777
    ok = mode & 0o077 == 0 and st.st_uid == os.geteuid()
    return _check('journal directory', ok,
                  '%s: mode %o, owner uid %d (want 0700, uid %d)'
                  % (path, mode, st.st_uid, os.geteuid()))


def check(conn):
    return (_check_driver() + _check_features(conn) + _check_paths() +
            [_check_qemu_img(), _check_rootwrap(), _check_space(),
             _check_state_dir()])


def _print_check(results):
    for r in results:
        print('%(result)-4s %(check)s: %(detail)s' % r)


# -- main -----------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='nova-snapdriver-manage',
        description='Snapshots in flight, their recovery, and a host check '
                    'for the nova-snapdriver compute driver.')
    parser.add_argument('--config-file', action='append', default=[],
                        help='nova.conf to read (repeatable; default: '
                             "nova's usual locations)")
    parser.add_argument('--json', action='store_true',
                        help='print JSON instead of text')
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('status', help='snapshots in flight or interrupted')
    rec = sub.add_parser('recover', help='repair interrupted snapshots')
    rec.add_argument('--dry-run', action='store_true',
                     help='say what would be done, do nothing')
    sub.add_parser('check', help='can this host run the driver?')
    sub.add_parser('purge', help="remove the driver's state (for nova's "
                                 'in-tree driver); refused while a snapshot '
                                 'needs it')
    rex = sub.add_parser(
        'reexport', help="make nova.virt.snapdriver importable from nova's "
                         'own package directory (nova from distribution '
                         'packages)')
    rex.add_argument('--remove', action='store_true',
                     help='remove what reexport wrote')
    return parser.parse_args(argv)


def _reexport(remove):
    try:
        print(reexport.remove() if remove else reexport.install())
    except (reexport.ReexportError, OSError) as e:
        print('reexport: %s' % e, file=sys.stderr)
        return 1
    return 0


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == 'reexport':
        return _reexport(args.remove)
    nova_argv = ['nova-snapdriver-manage']
    for path in args.config_file:
        nova_argv += ['--config-file', path]
    nova_config.parse_args(nova_argv, configure_db=False, init_rpc=False)
    objects.register_all()
    conn = _connect()
    try:
        if args.command == 'status':
            result, show = status(conn), _print_status
            failed = any(r['state'] != 'in flight' for r in result)
        elif args.command == 'recover':
            result, show = recover(conn, args.dry_run), _print_recover
            failed = any(r['problems'] or r['state'] in (
                'failed', 'corrupt', 'incomplete', 'kept') for r in result)
        elif args.command == 'purge':
            result, show = purge(), _print_purge
            failed = bool(result['refused'])
        else:
            result, show = check(conn), _print_check
            failed = any(r['result'] == 'FAIL' for r in result)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        show(result)
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
