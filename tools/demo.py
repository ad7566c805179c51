#!/usr/bin/env python3
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

"""A live snapshot with nova-snapdriver, on this machine, in under a minute.

This is what ``tools/demo`` runs once it has installed everything.  It
brings up real parts from the functional test bed (tests/testbed/), takes
one snapshot exactly the way nova-compute would, shows what came out, and
tears everything down again:

1. libvirtd, started if it is not running (tests/testbed/libvirtd.py);
2. a keystone-less glance-api on 127.0.0.1 (tests/testbed/glance.py);
3. nova, configured the way nova-compute configures itself, with
   ``compute_driver = snapdriver.SnapLibvirtDriver`` (nova_env.py); nova
   logs to nova-compute.log in the work directory, not to the screen;
4. a VM laid out like a nova instance: a base image, a qcow2 disk over it,
   a running libvirt domain with a tiny Linux guest, and the nova Instance
   object that names it (tests/testbed/instance.py);
5. the snapshot image, created in Glance the way nova-api creates it;
6. ``driver.snapshot(context, instance, image_id, update_task_state)``,
   the call nova-compute makes, with a progress listener that draws bars;
7. what a user would check afterwards: the image in Glance, its content,
   the domain, the snapshots directory.

How the driver is called is in ``start_nova()``, ``create_image()`` and
``take_snapshot()``; the rest is the stage around it.

Run it as root through ``tools/demo``; ``tools/demo.py`` alone works once
tools/demo has made the venv .venv-demo.
"""

import argparse
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import sys
import time
import traceback
import warnings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_PYTHON = os.path.join(REPO, '.venv-demo', 'bin', 'python')
DEFAULT_WORKDIR = '/var/tmp/nova-snapdriver-demo'
MIN_DISK_MIB = 64


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='tools/demo',
        description='Take a live snapshot of a running VM with the '
        'nova-snapdriver compute driver, into a local Glance, and show '
        'what came out.  Needs root.  tools/demo installs what is needed '
        '(Debian packages, a venv in .venv-demo) and then runs '
        'tools/demo.py with these options.',
        epilog='Exit status: 0 if the snapshot was taken and every check '
        'passed, 1 otherwise, 2 for bad usage.')
    parser.add_argument(
        '--workdir', default=DEFAULT_WORKDIR,
        help='where Glance, nova and the VM keep their files and logs '
        '(default: %(default)s); removed at the end unless --keep')
    parser.add_argument(
        '--disk-mib', type=int, default=256, metavar='MIB',
        help='virtual size of the VM\'s disk in MiB, at least %d '
        '(default: %%(default)s); its upper half is filled with data, '
        'so the snapshot has something to copy' % MIN_DISK_MIB)
    parser.add_argument(
        '--mode', choices=('idle', 'markers'), default='idle',
        help='idle: the guest does not write, so the image must equal the '
        'disk; markers: the guest writes numbered blocks all along, and '
        'the image must hold an unbroken run of them (a point-in-time '
        'copy) (default: %(default)s)')
    parser.add_argument(
        '--keep', action='store_true',
        help='keep the work directory (Glance\'s images, the logs) at the '
        'end; the VM is removed anyway')
    args = parser.parse_args(argv)
    if args.disk_mib < MIN_DISK_MIB:
        parser.error('--disk-mib must be at least %d' % MIN_DISK_MIB)
    args.workdir = os.path.abspath(args.workdir)
    return args


def use_demo_venv():
    """Carry on in the demo's venv if this python has no nova."""
    if importlib.util.find_spec('nova') is not None:
        return
    if not os.path.exists(VENV_PYTHON):
        sys.exit('tools/demo.py: %s has no nova; run tools/demo, which '
                 'sets up %s first' % (sys.executable,
                                       os.path.dirname(
                                           os.path.dirname(VENV_PYTHON))))
    os.execv(VENV_PYTHON, [VENV_PYTHON] + sys.argv)


if __name__ == '__main__':
    # Before the imports below, so that any python3 answers --help and
    # bad usage; then a python without nova hands over to the venv.
    parse_args()
    use_demo_venv()

# The test bed belongs to the repository, not to the installed package.
# Appended, so that nova and nova_snapdriver still come from site-packages.
sys.path.append(REPO)
# Library warnings (eventlet's deprecation, ...) are not part of the story.
warnings.simplefilter('ignore')

# nova_env imports nova.tests, which must come before any other nova module.
from tests.testbed import nova_env  # noqa: E402,I100

import libvirt  # noqa: E402
from nova.compute import utils as compute_utils  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402
from oslo_log import log as oslo_logging  # noqa: E402

from nova_snapdriver import progress  # noqa: E402

from tests.testbed import checks  # noqa: E402
from tests.testbed import glance as test_glance  # noqa: E402
from tests.testbed import guest as test_guest  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402
from tests.testbed import libvirtd  # noqa: E402

# The guest's kernel and initramfs, built once and shared with the
# functional tests (see tests/functional/conftest.py).
GUEST_CACHE = os.environ.get('SNAPDRIVER_GUEST_CACHE',
                             '/var/tmp/nova-snapdriver-guest')
# Left in every work directory this program makes: only such a directory
# is ever emptied when a new run starts.
STAMP = '.nova-snapdriver-demo'
# Demo VMs are instance-00de0000 and up, so that a demo never takes the
# domain name a functional test run (instance-00000001, ...) wants.
FIRST_INSTANCE_ID = 0xde0000
MiB = 1024 * 1024


class DemoError(Exception):
    """Something the user can fix; reported without a traceback."""


# -- the screen ------------------------------------------------------------

class Screen(object):
    """The story on stdout: a section per stage, a line per step."""

    LABEL = 11    # width of the label column
    TEXT = 55     # width of the text column, before the time or verdict

    def __init__(self, out=sys.stdout):
        self.out = out
        self.failed = []

    def write(self, text):
        self.out.write(text)
        self.out.flush()

    def section(self, title):
        self.write('\n%s\n' % title)

    def line(self, label, text, right=''):
        line = '  %-*s %-*s %s' % (self.LABEL, label, self.TEXT, text, right)
        self.write(line.rstrip() + '\n')

    def step(self, label, func, *args):
        """Run ``func(*args)``, which returns (result, summary); time it."""
        start = time.monotonic()
        try:
            result, summary = func(*args)
        except BaseException:
            self.line(label, 'failed')
            raise
        self.line(label, summary, '%6.2f s' % (time.monotonic() - start))
        return result

    def check(self, label, ok, text):
        """A result line with a verdict; a failed one fails the demo."""
        if not ok:
            self.failed.append(label)
        self.line(label, text, 'ok' if ok else 'FAILED')


class ProgressBars(object):
    """Draws the driver's progress: one line per snapshot phase.

    A listener for ``nova_snapdriver.progress.listen()``: it is called with
    (instance_uuid, phase, done, total) on every update of the block copy
    ('copy', in bytes) and of the upload ('upload'), and with
    ('<phase>:done', seconds, None) when a phase ends.  On a terminal the
    bar is redrawn in place with \\r; otherwise a plain line is printed
    every few seconds.
    """

    WIDTH = 20
    REDRAW = 0.05        # s between two redraws of a bar on a terminal
    PLAIN_EVERY = 2.0    # s between two plain progress lines
    # What the long step of each phase is called on the screen.
    STEPS = {'copy': ('capture', 'block copy'),
             'upload': ('upload', 'to Glance')}

    def __init__(self, screen, instance_uuid):
        self.screen = screen
        self.uuid = instance_uuid
        self.tty = screen.out.isatty()
        self._bar = None      # (phase, text) of the bar last drawn
        self._drawn = 0.0     # when it was drawn

    def __call__(self, instance_uuid, phase, done, total):
        if instance_uuid != self.uuid:
            return
        if phase.endswith(':done'):
            self.phase_done(phase[:-len(':done')], done)
        elif phase in self.STEPS:
            self.update(phase, done, total)

    def _bar_text(self, step, done, total):
        frac = min(done / total, 1.0) if total else 0.0
        filled = int(self.WIDTH * frac)
        return '%-10s [%s%s] %3d%%  %s' % (
            step, '#' * filled, '.' * (self.WIDTH - filled), 100 * frac,
            progress.human_size(total or 0))

    def update(self, step_name, done, total):
        phase, step = self.STEPS[step_name]
        text = self._bar_text(step, done, total)
        now = time.monotonic()
        complete = total and done >= total
        if self.tty:
            if complete or now - self._drawn >= self.REDRAW:
                self.screen.write('\r  %-*s %-*s' % (
                    Screen.LABEL, phase, Screen.TEXT, text))
                self._drawn = now
        elif self._bar is None or now - self._drawn >= self.PLAIN_EVERY:
            self.screen.line(phase, text)
            self._drawn = now
        self._bar = (phase, text)

    def phase_done(self, phase, seconds):
        """End the phase's line with its duration."""
        text = ''
        if self._bar and self._bar[0] == phase:
            text = self._bar[1]
            if self.tty:
                self.screen.write('\r')
        self._bar = None
        self.screen.line(phase, text, '%6.2f s' % seconds)

    def close(self):
        """Finish a bar left open by a failure, so errors start a line."""
        if self._bar and self.tty:
            self.screen.write('\n')
        self._bar = None


class TaskStates(object):
    """``update_task_state`` as nova's compute manager passes it.

    The driver reports the instance's task_state through it:
    image_pending_upload once the plan is made, image_uploading before the
    upload.  Here the states are only recorded.
    """

    def __init__(self):
        self.states = []

    def __call__(self, task_state, expected_state=None):
        self.states.append(task_state)


# -- the steps -------------------------------------------------------------

def make_workdir(path):
    """Create the work dir; empty one left by an earlier run (--keep)."""
    if os.path.exists(os.path.join(path, STAMP)):
        shutil.rmtree(path)
    elif os.path.isdir(path) and os.listdir(path):
        raise DemoError('%s exists and was not made by this demo; remove it '
                        'or pick another --workdir' % path)
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, STAMP), 'w').close()


def start_libvirtd():
    info = libvirtd.ensure_running()
    conn = libvirt.open(info.uri)
    how = 'started now' if info.started else 'already running'
    return conn, 'libvirt %s, QEMU %s (%s)' % (
        info.libvirt_version, info.qemu_version, how)


def start_glance(workdir):
    server = test_glance.GlanceServer(os.path.join(workdir, 'glance'))
    server.start()
    return server, 'glance-api at %s' % server.url


def start_nova(workdir, glance_url):
    """What nova-compute does at start, up to a running driver.

    nova.conf is parsed and logging set up; the driver named by
    ``compute_driver`` is loaded and its ``init_host()`` run.  Its capture
    method is the default a fresh install gets: ``auto``.
    """
    nova_env.configure(workdir, glance_url, virt_type=libvirtd.virt_type(),
                       extra={'snapdriver': {'capture_method': 'auto'}})
    oslo_logging.setup(nova_env.CONF, 'nova')
    driver = nova_env.load_driver()
    return driver, '%s, init_host() done' % nova_env.CONF.compute_driver


class DemoInstance(test_instance.NovaInstance):
    """A test bed instance whose disk holds more of its own data.

    The test bed writes a few small patterns (see instance.py).  Here the
    upper half of the disk is filled too, in the instance's own qcow2
    layer: that layer is what the live block copy copies, so the progress
    bars have something to show.
    """

    def create_disks(self):
        super(DemoInstance, self).create_disks()
        half = self.disk_size // 2 // MiB
        test_instance.write_patterns(self.disk_path, 'qcow2',
                                     [(half, half, 0xd5)])


def free_instance_id(conn):
    """The first id from FIRST_INSTANCE_ID whose domain name is free."""
    taken = {dom.name() for dom in conn.listAllDomains()}
    number = FIRST_INSTANCE_ID
    while 'instance-%08x' % number in taken:
        number += 1
    return number


def start_vm(conn, disk_mib, mode):
    boot_files = test_guest.build_boot_files(GUEST_CACHE)
    # The test bed numbers its instances from here.
    test_instance.NovaInstance._next_id = free_instance_id(conn)
    inst = DemoInstance(conn, boot_files, disk_mib=disk_mib, mode=mode)
    try:
        inst.start()
    except BaseException:
        inst.cleanup()
        raise
    summary = '%s: %d MiB disk, %s guest' % (inst.name, disk_mib, mode)
    return inst, summary


def create_image(context, inst):
    """The queued snapshot image, made the way nova-api's createImage does."""
    image = compute_utils.create_image(
        context, inst.obj, 'demo snapshot of %s' % inst.name, 'snapshot',
        nova_glance.API())
    return image, '%s, %s' % (image['id'], image['status'])


def take_snapshot(screen, driver, context, inst, image_id):
    """The call nova-compute makes for a createImage; bars while it runs."""
    bars = ProgressBars(screen, inst.uuid)
    task_states = TaskStates()
    progress.listen(bars)
    start = time.monotonic()
    try:
        driver.snapshot(context, inst.obj, image_id, task_states)
    finally:
        bars.close()
        progress.unlisten(bars)
    screen.line('total', 'task states: %s' % ' -> '.join(task_states.states),
                '%6.2f s' % (time.monotonic() - start))


def show_result(screen, glance_url, inst, image_id, workdir, marks_before):
    """What a user would look at: the image, its bytes, domain, files."""
    client = test_glance.client(glance_url)
    image = client.images.get(image_id)
    screen.line('image id', image_id)
    screen.check('status', image.status == 'active', image.status)
    screen.line('size', '%s (%d bytes)'
                % (progress.human_size(image.size), image.size))
    screen.check('disk_format', image.disk_format == 'qcow2',
                 '%s, container_format %s' % (image.disk_format,
                                              image.container_format))

    local = checks.download(client, image_id,
                            os.path.join(workdir, 'downloaded.qcow2'))
    try:
        info = checks.image_info(local, 'qcow2')
        screen.check('flat', 'backing-filename' not in info,
                     'no backing file' if 'backing-filename' not in info
                     else 'backed by %s' % info['backing-filename'])
        if inst.mode == 'idle':
            same = checks.same_content(local, inst.disk_path)
            screen.check('content', same, 'equal to the instance\'s disk'
                         if same else 'differs from the instance\'s disk')
            screen.line('', '(qemu-img compare, image vs running disk)')
        else:
            show_markers(screen, inst, local, marks_before)
    finally:
        os.unlink(local)

    running = inst.state() == libvirt.VIR_DOMAIN_RUNNING
    persistent = inst.is_persistent()
    screen.check('domain', running and persistent, '%s %s and %s' % (
        inst.name, 'running' if running else 'NOT running',
        'persistent' if persistent else 'NOT persistent (transient)'))
    snapshots_dir = nova_env.CONF.libvirt.snapshots_directory
    left = checks.leftovers(snapshots_dir)
    where = os.path.relpath(snapshots_dir, workdir)
    screen.check('leftovers', not left, 'nothing left in %s' % where
                 if not left else '%d left in %s: %s' % (
                     len(left), where, ', '.join(left[:3])))


def show_markers(screen, inst, image_path, marks_before):
    """A point-in-time copy holds markers 1..K with no gap (guest.py)."""
    marks_now = test_guest.last_console_mark(inst.console_log)
    try:
        count = test_guest.check_consistent(
            test_guest.read_markers(image_path, 'qcow2'))
    except AssertionError as e:
        screen.check('markers', False, str(e))
        return
    screen.check('markers', count >= marks_before,
                 'markers 1..%d with no gap: point in time' % count)
    screen.line('', '(the guest had written %d when the snapshot began, '
                '%d by now)' % (marks_before, marks_now))


# -- main ------------------------------------------------------------------

def run(args, screen):
    """The whole demo; True if every check passed."""
    started = time.monotonic()
    make_workdir(args.workdir)
    screen.write('nova-snapdriver demo: a live snapshot of a running VM '
                 'into a local Glance\n')
    screen.line('work dir', args.workdir)
    screen.line('nova log', os.path.join(args.workdir, 'nova-compute.log'))

    with contextlib.ExitStack() as teardown:
        # Undone in reverse order, whatever happens below.
        teardown.push(lambda *exc: finish(screen, args, exc[0]))

        try:
            screen.section('Setting up')
            conn = screen.step('libvirtd', start_libvirtd)
            teardown.callback(conn.close)
            glance = screen.step('Glance', start_glance, args.workdir)
            teardown.callback(stop_glance, screen, glance)
            driver = screen.step('nova', start_nova, args.workdir,
                                 glance.url)
            teardown.callback(stop_nova, screen)
            inst = screen.step('VM', start_vm, conn, args.disk_mib,
                               args.mode)
            teardown.callback(remove_vm, screen, inst)
            context = nova_env.admin_context()
            image = screen.step('image', create_image, context, inst)

            screen.section('Snapshot: driver.snapshot(context, instance, '
                           'image_id, update_task_state)')
            marks_before = test_guest.last_console_mark(inst.console_log)
            take_snapshot(screen, driver, context, inst, image['id'])

            screen.section('Result')
            show_result(screen, glance.url, inst, image['id'],
                        args.workdir, marks_before)
        finally:
            screen.section('Teardown')
    took = time.monotonic() - started
    if screen.failed:
        screen.write('\nFAILED in %.1f s: %s\n' % (took,
                                                   ', '.join(screen.failed)))
        return False
    screen.write('\nDone in %.1f s: every check passed.\n' % took)
    return True


def remove_vm(screen, inst):
    inst.cleanup()
    screen.line('VM', '%s destroyed and undefined, its files removed'
                % inst.name)


def stop_nova(screen):
    nova_env.shutdown()
    screen.line('nova', 'driver stopped (cleanup_host())')


def stop_glance(screen, glance):
    glance.stop()
    screen.line('Glance', 'stopped')


def finish(screen, args, exc_type):
    """Last of the teardown: the work dir goes, unless kept."""
    if args.keep or exc_type is not None or screen.failed:
        why = 'as asked' if args.keep else 'to look at what went wrong'
        screen.line('work dir', 'kept %s: %s' % (why, args.workdir))
    else:
        close_log_files()
        shutil.rmtree(args.workdir)
        screen.line('work dir', 'removed, logs too (--keep keeps it)')
    screen.line('libvirtd', 'left running')


def close_log_files():
    """Detach nova's log file, which is about to go with the work dir."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()


def main(argv=None):
    args = parse_args(argv)
    if os.geteuid() != 0:
        sys.exit('tools/demo: run me as root: I start libvirtd and a VM')
    # A plain kill unwinds like Ctrl-C does: the teardown still runs.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    screen = Screen()
    try:
        return 0 if run(args, screen) else 1
    except DemoError as e:
        screen.write('\ntools/demo: %s\n' % e)
    except KeyboardInterrupt:
        screen.write('\ntools/demo: interrupted\n')
    except SystemExit:
        screen.write('\ntools/demo: terminated\n')
        raise
    except Exception:
        screen.write('\ntools/demo FAILED:\n%s' % traceback.format_exc())
        screen.write('More in the logs under %s\n' % args.workdir)
    return 1


if __name__ == '__main__':
    sys.exit(main())
