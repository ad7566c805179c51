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

"""The measuring half of the benchmark (tools/bench/bench.py): test bed, runs.

What this holds: the instance filled with data (``DataInstance``), the
pollers (``Watcher``: transient seconds and peak temp space), the CPU
seconds Glance, QEMU and this process use per run (``bench_cpu``), the
guest's writes (``GuestWriter``), the timing of nova's in-tree phases
from outside, one snapshot and the two floors (Glance alone, and nova's
image API alone; each the median of uploads after the first snapshot and
after each round of drivers), the timing and guest-write runs of one
case, and ``measure()``, which sets the test bed up, runs every case
(disk size x data kind x data layout) and takes it all down again.  The
figures it returns become tables and a plot in tools/bench/bench_report.py.

Per snapshot: wall time and its phases (ours from the driver's progress
events; the in-tree driver's by timing its ``_live_snapshot``,
``libvirt_utils.extract_snapshot`` and ``_image_api.update`` from here,
nova itself unchanged), seconds the domain was transient (isPersistent
polled every 20 ms), peak space used in the snapshots directory (polled),
bytes uploaded.  For ``stream`` the phases are plan and stream (capture
and upload are one), and its peak temp space is the pull backup's scratch
file and whatever else its work dir holds (the work dir is in the
snapshots directory the poller walks).

Guest writes: on the first data kind of each size and layout, for each
driver (and for rebase and copy once more with ``[snapdriver]
block_job_bandwidth`` = --bandwidth; backup and stream have no limit,
libvirt's backup API has no rate), 4 MiB writes are injected back to back
through the QEMU monitor (HMP ``qemu-io -d <the virtio disk's QOM path>``,
which goes through the device's own block backend and so through every
filter a block job or backup puts above the disk) for --write-seconds,
once with nothing else running and once from the start of a snapshot
(stopping early if the snapshot ends first).  The ratio of the two
throughputs is reported (targets: >= 0.70 with the limit, >= 0.50 for
stream with none), with that snapshot's peak temp space and the bytes the
guest overwrote (the writes cycle over one 64 MiB window, so at most 64
MiB).  These snapshots are separate from the timed ones, whose times they
would spoil.  What the ratio also holds: the writes share the cores with
everything the snapshot runs (qemu-img, Glance), and each one is a
libvirt API call, serialized with the driver's own calls on the domain
(job polls, undefine, define), which a real guest's writes are not.

Block jobs are polled every [snapdriver] block_job_poll_interval as
shipped (0.5 s, as nova's in-tree driver sleeps), not the test bed's 0.1 s.

Data kinds: ``random`` (incompressible) and ``compressible`` (each MiB half
random, half a repeated text: about 2:1 for zlib).  The disk is filled
from 32 MiB to its end (the same image either way) in one of two layouts:

- ``base``: all of it in the instance's base image; the disk's own qcow2
  layer holds only the test bed's few MiB of patterns, as if the guest had
  written next to nothing since it booted.  A shallow capture (rebase,
  copy) then copies almost nothing, and its temp space is the image.
- ``instance``: 64 MiB of it in the base (32 to 96 MiB, the window the
  guest-write runs write over), the rest in the instance's own qcow2
  layer, written there before the domain starts (qemu-nbd, through
  libnbd), as a guest that wrote its data itself leaves it.  The shallow
  captures then copy that layer first: temp space of about the layer plus
  the image, and rebase's transient window as long as that copy.

The domain's state (--state): ``running``, all of the above.
``shutoff``: the domain is shut off once it has booted (``shut_off``)
and every timed snapshot is cold: ours with ``capture_method = stream``
(its cold stream: qemu-nbd, run by the driver, read straight into
Glance), nova in-tree (qemu-img convert into a temp image, then the
upload), the read alone and the floors; no guest writes.  ``suspend``:
the domain runs and ``[workarounds] disable_libvirt_livesnapshot`` is
set, so nova saves the guest (managed save) for a cold snapshot and
starts it again; ``DowntimeWatcher`` sums how long the domain was not
running.  In both, rebase, copy and backup are left out
(bench_report.methods_in_state), and each of our rows says what ran,
from the driver's log (``DriverLog``, bench_report.what_ran).
"""

import contextlib
import io
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from unittest import mock
from xml.etree import ElementTree

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))

from tests.testbed import nova_env  # noqa: E402,I100 (nova.tests first)

from glanceclient.common import http as glanceclient_http  # noqa: E402
import libvirt  # noqa: E402
import libvirt_qemu  # noqa: E402
from nova.compute import utils as compute_utils  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402
from nova.virt.libvirt import utils as libvirt_utils  # noqa: E402

from nova_snapdriver import conf as snap_conf  # noqa: E402
from nova_snapdriver import progress  # noqa: E402
from nova_snapdriver import upload  # noqa: E402
from tests.testbed import glance as test_glance  # noqa: E402
from tests.testbed import guest as test_guest  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402
from tests.testbed import libvirtd  # noqa: E402

from bench_cpu import CpuMeter  # noqa: E402 (tools/bench, beside this file)
from bench_cpu import group_pids  # noqa: E402
import bench_pin  # noqa: E402
import bench_report  # noqa: E402

GiB = 1024 ** 3
MiB = 1024 ** 2
METHODS = ('rebase', 'copy', 'backup', 'stream')
# Methods that honour [snapdriver] block_job_bandwidth (libvirt has no
# bandwidth for a backup, pull (stream) or push; nova's in-tree driver has
# no such option).
LIMITED = ('rebase', 'copy')
# A timing row, not a driver: a stream snapshot whose image is read (and
# hashed) to nowhere instead of sent to Glance.  Its wall is what the disk
# and the NBD export cost; ÷ glance-only well under 1 means Glance, not the
# read, bounds the stream.
READ_ALONE = 'stream (read alone)'
# A timing row with --hash-off-row: a stream whose upload is not hashed
# ([snapdriver] verify_upload_hash = False); against the stream row, what
# verifying costs.
HASH_OFF = 'stream (hash off)'
# A guest-writes row with --backup-held-row: a stream whose pull backup is
# held while the guest writes and nothing is read, then ends unread.  Its
# ratio is what the backup's copy-before-write alone costs the guest; the
# stream row's, that and the reading.
BACKUP_HELD = 'stream (backup held, nothing read)'
# Where the data is (see above); with 'instance', how much stays in the base.
LAYOUTS = ('base', 'instance')
BASE_DATA_IN_INSTANCE_LAYOUT = 64 * MiB
TEXT = b'nova-snapdriver compressible data. '
WRITE_SIZE = 4 * MiB
WRITE_WINDOW = 64 * MiB
GUEST_CACHE = os.environ.get('SNAPDRIVER_GUEST_CACHE',
                             '/var/tmp/nova-snapdriver-guest')


# -- the instance ---------------------------------------------------------

def data_chunk(kind):
    """One MiB of ``kind`` data, new random bytes on each call."""
    if kind == 'random':
        return os.urandom(MiB)
    if kind == 'compressible':
        text = TEXT * (MiB // 2 // len(TEXT) + 1)
        return os.urandom(MiB // 2) + text[:MiB // 2]
    raise ValueError('unknown data kind %r (random, compressible)' % kind)


def fill(pwrite, start, end, kind):
    """``pwrite(data, offset)`` ``kind`` data from ``start`` to ``end``."""
    offset = start
    while offset < end:
        n = min(MiB, end - offset)
        pwrite(data_chunk(kind)[:n], offset)
        offset += n


def fill_qcow2_layer(path, start, end, kind):
    """Write ``kind`` data into the qcow2 ``path`` itself, not its backing.

    qemu-nbd serves the image to libnbd over a socket libnbd hands it
    (systemd socket activation); it exits when libnbd disconnects, and
    libnbd reaps it when the handle is freed (the binding has no close()),
    so no process is left behind.
    """
    # libnbd's binding, linked into the venv: tools/host/link-libnbd
    import nbd
    handle = nbd.NBD()
    try:
        handle.connect_systemd_socket_activation(
            ['qemu-nbd', '-f', 'qcow2', path])
        fill(lambda data, offset: handle.pwrite(data, offset), start, end,
             kind)
        handle.flush()
        handle.shutdown()
    finally:
        handle = None  # the last reference: libnbd closes and reaps


class DataInstance(test_instance.NovaInstance):
    """A test instance filled with ``kind`` data from 32 MiB to its end.

    ``layout`` 'base': all of it in the base image; 'instance': the first
    BASE_DATA_IN_INSTANCE_LAYOUT of it in the base, the rest in the
    instance's own qcow2 layer.
    """

    def __init__(self, *args, kind='random', layout='base', **kwargs):
        super(DataInstance, self).__init__(*args, **kwargs)
        if layout not in LAYOUTS:
            raise ValueError('unknown layout %r (%s)'
                             % (layout, ', '.join(LAYOUTS)))
        self.kind = kind
        self.layout = layout

    def create_disks(self):
        super(DataInstance, self).create_disks()
        start = test_guest.MARKER_BASE
        split = self.disk_size
        if self.layout == 'instance':
            split = min(start + BASE_DATA_IN_INSTANCE_LAYOUT, self.disk_size)
        with open(self.base_path, 'r+b') as f:
            fill(lambda data, offset: os.pwrite(f.fileno(), data, offset),
                 start, split, self.kind)
        if split < self.disk_size:
            fill_qcow2_layer(self.disk_path, split, self.disk_size, self.kind)

    def qemu_pid(self):
        """The pid of the domain's QEMU, from libvirtd's pid file."""
        with open('/run/libvirt/qemu/%s.pid' % self.name) as f:
            return int(f.read())

    def running_qemu_pid(self):
        """qemu_pid(), or None while no QEMU runs the domain."""
        try:
            return self.qemu_pid()
        except (FileNotFoundError, ValueError):
            return None  # shut off, or saved and not yet restored


def shut_off(inst, timeout=60):
    """Shut the domain off cleanly and wait until libvirt says it is.

    libvirt's graceful destroy sends QEMU SIGTERM only: QEMU flushes and
    closes its images and exits, as it does when nova's power-off gives
    up waiting for the guest.  An ACPI shutdown (``dom.shutdown()``) is
    not asked for: the test guest has no handler for it.  The guest is
    idle and never writes, so nothing it wrote is in flight.
    """
    inst.lookup().destroyFlags(libvirt.VIR_DOMAIN_DESTROY_GRACEFUL)
    deadline = time.monotonic() + timeout
    while inst.state() != libvirt.VIR_DOMAIN_SHUTOFF:
        if time.monotonic() > deadline:
            raise RuntimeError('%s did not shut off in %d s'
                               % (inst.name, timeout))
        time.sleep(0.1)


# -- what is measured -----------------------------------------------------

class Watcher(threading.Thread):
    """Polls the domain's persistence and the snapshots dir's usage."""

    def __init__(self, uuid, directory, interval=0.02):
        super(Watcher, self).__init__(daemon=True)
        self.conn = libvirt.open(libvirtd.URI)
        self.uuid = uuid
        self.directory = directory
        self.interval = interval
        self.transient = 0.0
        self.peak = 0
        self._done = threading.Event()

    def _usage(self):
        total = 0
        for root, _dirs, files in os.walk(self.directory):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_blocks
                except OSError:
                    pass
        return total * 512

    def run(self):
        last = time.monotonic()
        while not self._done.is_set():
            now = time.monotonic()
            try:
                if not self.conn.lookupByUUIDString(self.uuid).isPersistent():
                    self.transient += now - last
            except libvirt.libvirtError:
                pass
            last = now
            self.peak = max(self.peak, self._usage())
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.conn.close()


class DowntimeWatcher(threading.Thread):
    """Sums the seconds the domain was not running, polled every 10 ms.

    Each interval between two polls counts as the state the second poll
    saw; a domain libvirt does not find (undefined for a moment) counts
    as down.  libvirt's lifecycle events would need an event loop of
    their own beside the one nova's Host runs in this process: polled.
    ``sample``, if given, is called at every poll (CpuMeter.sample:
    a managed save replaces the QEMU).
    """

    def __init__(self, uuid, interval=0.01, sample=None):
        super(DowntimeWatcher, self).__init__(daemon=True)
        self.conn = libvirt.open(libvirtd.URI)
        self.uuid = uuid
        self.interval = interval
        self.sample = sample or (lambda: None)
        self.down = 0.0
        self.states = []  # every state seen, in order, each once per run
        self._done = threading.Event()

    def _state(self):
        try:
            return self.conn.lookupByUUIDString(self.uuid).state()[0]
        except libvirt.libvirtError:
            return None

    def run(self):
        last = time.monotonic()
        while not self._done.is_set():
            dom_state = self._state()
            now = time.monotonic()
            if dom_state != libvirt.VIR_DOMAIN_RUNNING:
                self.down += now - last
            if not self.states or self.states[-1] != dom_state:
                self.states.append(dom_state)
            last = now
            self.sample()
            time.sleep(self.interval)

    def stop(self):
        self._done.set()
        self.join()
        self.conn.close()


class DriverLog(logging.Handler):
    """The messages our driver logs (nova_snapdriver.*) while attached."""

    LOGGER = 'nova_snapdriver'

    def __init__(self):
        super(DriverLog, self).__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        try:
            self.messages.append(record.getMessage())
        except Exception:
            pass

    def __enter__(self):
        logger = logging.getLogger(self.LOGGER)
        self._level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
        logger.addHandler(self)
        return self

    def __exit__(self, *exc):
        logger = logging.getLogger(self.LOGGER)
        logger.removeHandler(self)
        logger.setLevel(self._level)


def disk_qom_path(domain, dev='vda'):
    """The QOM path of the block backend of ``dev``'s virtio device.

    HMP ``qemu-io`` on the disk's node is refused while the device holds
    it (write permission conflict); with ``-d`` and this path it writes
    through the device's own backend, as the guest's I/O does.
    """
    root = ElementTree.fromstring(domain.XMLDesc(0))
    for disk in root.findall('./devices/disk'):
        if disk.find('target').get('dev') == dev:
            alias = disk.find('alias').get('name')
            return '/machine/peripheral/%s/virtio-backend' % alias
    raise LookupError('no disk %s' % dev)


class GuestWriter(threading.Thread):
    """Back-to-back 4 MiB writes through the monitor for ``seconds``.

    Each write is a synchronous HMP command, so the time between the first
    command and the last reply is the time the disk took, monitor round
    trips included.  Writes cycle over a 64 MiB window starting at 32 MiB
    (the base's data region, so the first pass allocates in the overlay).
    Stops early when ``stop()`` is called.
    """

    def __init__(self, uuid, seconds):
        super(GuestWriter, self).__init__(daemon=True)
        self.conn = libvirt.open(libvirtd.URI)
        self.domain = self.conn.lookupByUUIDString(uuid)
        self.device = disk_qom_path(self.domain)
        self.seconds = seconds
        self.written = 0
        self.elapsed = 0.0
        self.error = None
        self._done = threading.Event()

    def write(self, n):
        offset = test_guest.MARKER_BASE + (n * WRITE_SIZE) % WRITE_WINDOW
        reply = libvirt_qemu.qemuMonitorCommand(
            self.domain, 'qemu-io -d %s "write -P 0x%02x %d %d"'
            % (self.device, n % 256, offset, WRITE_SIZE),
            libvirt_qemu.VIR_DOMAIN_QEMU_MONITOR_COMMAND_HMP)
        if reply.strip():  # qemu-io's own output goes to QEMU's log
            raise RuntimeError('qemu-io: %s' % reply.strip())

    def run(self):
        start = time.monotonic()
        deadline = start + self.seconds
        n = 0
        try:
            while time.monotonic() < deadline and not self._done.is_set():
                self.write(n)
                n += 1
                self.written += WRITE_SIZE
        except Exception as e:
            self.error = e
        self.elapsed = time.monotonic() - start

    def stop(self):
        self._done.set()
        self.join()
        self.conn.close()
        if self.error:
            raise self.error

    @property
    def throughput(self):
        return self.written / self.elapsed if self.elapsed else 0.0


def idle_write_throughput(inst, seconds):
    """Bytes/s the guest's disk takes with nothing else running."""
    writer = GuestWriter(inst.uuid, seconds)
    writer.start()
    writer.join()
    writer.stop()
    return writer.throughput


@contextlib.contextmanager
def timed(obj, name, seconds, phase):
    """Add the time spent in ``obj.name(...)`` to ``seconds[phase]``.

    Wraps the attribute for the duration of the block only, on the object
    given: nova's code runs unchanged.
    """
    original = getattr(obj, name)
    own = name in vars(obj)  # a module's function, not a bound method

    def wrapper(*args, **kwargs):
        start = time.monotonic()
        try:
            return original(*args, **kwargs)
        finally:
            seconds[phase] = (seconds.get(phase, 0.0) +
                              time.monotonic() - start)
    setattr(obj, name, wrapper)
    try:
        yield
    finally:
        if own:
            setattr(obj, name, original)
        else:
            delattr(obj, name)


@contextlib.contextmanager
def intree_phases(driver, phases):
    """The in-tree driver's capture, extract and upload, timed from here.

    ``_live_snapshot`` mirrors, aborts, redefines, then runs
    ``extract_snapshot``: capture is the first minus the second.  A cold
    snapshot runs ``extract_snapshot`` alone (qemu-img convert); of a
    running guest (``disable_libvirt_livesnapshot``), after ``suspend``,
    the managed save, timed as ``save``.
    """
    with timed(driver, '_live_snapshot', phases, 'live_snapshot'), \
            timed(driver, 'suspend', phases, 'save'), \
            timed(libvirt_utils, 'extract_snapshot', phases, 'extract'), \
            timed(driver._image_api, 'update', phases, 'upload'):
        yield
    live = phases.pop('live_snapshot', None)
    if live is not None:
        phases['capture'] = live - phases.get('extract', 0.0)


def our_phases(uuid, phases):
    """A progress listener that records our driver's phase durations.

    For a stream it also splits the phase at its edges: ``to 1st byte``,
    from its start until the upload read its first byte (the pull backup
    begun, the NBD export connected, the image laid out, nova's image API
    under way), and ``after last``, from the last byte read until the
    phase ended (Glance finishing the upload, the image read back and
    verified, the backup ended).  ``glance-only`` times the upload call
    alone.
    """
    bytes_read = {}

    def on_phase(instance_uuid, phase, done, total):
        if instance_uuid != uuid:
            return
        now = time.monotonic()
        if phase == 'upload' and done:
            bytes_read.setdefault('first', now)
            if done == total:
                bytes_read['last'] = now
        if phase.endswith(':done'):
            name = phase[:-len(':done')]
            phases[name] = done
            if name == 'stream' and 'last' in bytes_read:
                phases['to 1st byte'] = bytes_read['first'] - (now - done)
                phases['after last'] = now - bytes_read['last']
    return on_phase


# -- one snapshot, and the floors -----------------------------------------

def settle():
    """Write back what earlier runs left dirty, before a timed run starts.

    Glance stores each upload in a file, and the floors' file is written
    just before their first upload: that is page cache the kernel writes
    back once about 10 % of memory is dirty (vm.dirty_background_ratio),
    while whatever runs next is timed.  Each timed run (snapshot or floor)
    starts with nothing dirty instead; runs committed before 2026-12-01's
    two-floor run (doc/benchmark/2026-12-01-1g-4g-instance-two-floors) did
    not.
    """
    os.sync()


def snapshot(bench, name, inst, writer=None,
             domain_state=bench_report.RUNNING):
    """Snapshot ``inst`` with driver ``name`` ('in-tree' or a method).

    Returns wall time, phases, transient seconds, peak temp bytes, bytes
    uploaded and the image id; with ``writer`` (a GuestWriter), it is
    started with the snapshot.  In a state other than running, also what
    ran (bench_report.what_ran); in ``suspend``, the seconds the guest
    was down (``down``, DowntimeWatcher).
    """
    image = compute_utils.create_image(bench.context, inst.obj, 'bench',
                                       'snapshot', bench.image_api)
    phases, nova_phases = {}, {}
    listener = our_phases(inst.uuid, phases)
    progress.listen(listener)
    driver = bench.drivers['in-tree' if name == 'in-tree' else 'ours']
    # nova's phases, wherever nova's code may run: in-tree, and ours,
    # which leaves a suspended snapshot to nova's code (or did before it
    # had its own).  Ours reports its own phases when it runs them.
    nova_code = (name == 'in-tree' or
                 domain_state == bench_report.SUSPEND)
    settle()
    watcher = Watcher(inst.uuid, bench.snapshots_dir)
    watcher.start()
    if writer:
        writer.start()
    cpu = CpuMeter(bench, inst.running_qemu_pid)
    downtime = None
    if domain_state == bench_report.SUSPEND:
        downtime = DowntimeWatcher(inst.uuid, sample=cpu.sample)
    log = DriverLog()
    cpu.start()
    if downtime:
        downtime.start()
    start = time.monotonic()
    try:
        with log, (intree_phases(driver, nova_phases) if nova_code
                   else contextlib.nullcontext()):
            driver.snapshot(bench.context, inst.obj, image['id'],
                            lambda **kw: None)
    finally:
        wall = time.monotonic() - start
        if downtime:
            downtime.stop()
        cpu.stop()
        if writer:
            writer.stop()
        watcher.stop()
        progress.unlisten(listener)
    if phases and 'save' in nova_phases:
        # Our own path saved the guest through the driver's suspend().
        phases['save'] = nova_phases['save']
    size = bench.glance.images.get(image['id']).size
    result = {'wall': wall, 'phases': phases or nova_phases,
              'transient': watcher.transient, 'peak_temp': watcher.peak,
              'uploaded': size, 'image_id': image['id'], 'cpu': cpu.used}
    if domain_state != bench_report.RUNNING:
        result['ran'] = bench_report.what_ran(
            'in-tree' if name == 'in-tree' else 'ours', log.messages)
    if downtime:
        result['down'] = downtime.down
        result['states'] = [STATE_NAMES.get(s, str(s))
                            for s in downtime.states]
    return result


# libvirt's domain states, as DowntimeWatcher.states names them.
STATE_NAMES = {None: 'not found',
               libvirt.VIR_DOMAIN_RUNNING: 'running',
               libvirt.VIR_DOMAIN_PAUSED: 'paused',
               libvirt.VIR_DOMAIN_SHUTOFF: 'shut off',
               libvirt.VIR_DOMAIN_SHUTDOWN: 'shutting down',
               libvirt.VIR_DOMAIN_BLOCKED: 'blocked',
               libvirt.VIR_DOMAIN_PMSUSPENDED: 'pm-suspended'}


def download(glance_client, image_id, workdir):
    """The bytes of an image, in a file both floors upload."""
    path = os.path.join(workdir, 'floor.img')
    with open(path, 'wb') as f:
        for chunk in glance_client.images.data(image_id):
            f.write(chunk)
    return path


def image_api_only(bench, inst, path, disk_format):
    """The second floor: nova's image API calls of a snapshot, nothing else.

    The image-API calls every libvirt driver's snapshot makes, nova's
    in-tree one and ours alike, back to back: ``get`` (a driver makes it
    at its start), then ``update`` with the snapshot's metadata and the
    file.  Over HTTP: GET image and schema; glanceclient's GET image and
    schemas, the PATCH, GET image; the PUT of the data; GET image and
    schema.  A snapshot ÷ this floor is what the driver adds beyond those
    calls: planning, capture, for ours hashing and verifying every byte
    (this floor sends a plain file), cleanup, and the bench's pollers
    (Watcher), which run during snapshots only.  This floor ÷ Glance alone
    is what nova's image API adds to the upload.

    Returns the seconds it took and the CPU seconds used (CpuMeter).
    """
    image = compute_utils.create_image(bench.context, inst.obj, 'floor',
                                       'snapshot', bench.image_api)
    metadata = bench.drivers['ours']._create_snapshot_metadata(
        inst.obj.image_meta, inst.obj, disk_format, 'floor')
    settle()
    cpu = CpuMeter(bench)
    cpu.start()
    start = time.monotonic()
    bench.image_api.get(bench.context, image['id'])
    with open(path, 'rb') as f:
        bench.image_api.update(bench.context, image['id'], metadata, f)
    wall = time.monotonic() - start
    cpu.stop()
    bench.glance.images.delete(image['id'])
    return wall, cpu.used


def glance_only(bench, path, writer=None):
    """The first floor: upload the file to a new image, nothing else.

    Returns the seconds it took and the CPU seconds used (CpuMeter).
    With ``writer`` (a GuestWriter), the guest writes meanwhile.
    """
    image = bench.glance.images.create(name='floor', disk_format='qcow2',
                                       container_format='bare')
    settle()
    if writer:
        writer.start()
    cpu = CpuMeter(bench)
    cpu.start()
    start = time.monotonic()
    try:
        with open(path, 'rb') as f:
            bench.glance.images.upload(image['id'], f)
    finally:
        wall = time.monotonic() - start
        cpu.stop()
        if writer:
            writer.stop()
    bench.glance.images.delete(image['id'])
    return wall, cpu.used


@contextlib.contextmanager
def conf_options(group, **options):
    """Set options of ``group`` for the block, then clear them."""
    for key, value in options.items():
        nova_env.CONF.set_override(key, value, group)
    try:
        yield
    finally:
        for key in options:
            nova_env.CONF.clear_override(key, group)


def drivers_to_run(args, domain_state=bench_report.RUNNING):
    return (bench_report.methods_in_state(args.methods, domain_state) +
            ([] if args.skip_intree else ['in-tree']))


def timed_drivers(args, domain_state=bench_report.RUNNING):
    """The drivers timed, and with stream its read alone (READ_ALONE).

    Not in ``suspend``: there nova's code may take our snapshot, and the
    read alone would then upload all the same.  With --hash-off-row, the
    stream unhashed (HASH_OFF) too, right after the stream.
    """
    names = drivers_to_run(args, domain_state)
    if 'stream' in names and getattr(args, 'hash_off_row', False):
        names.insert(names.index('stream') + 1, HASH_OFF)
    if 'stream' in names and domain_state != bench_report.SUSPEND:
        names.insert(names.index('stream') + 1, READ_ALONE)
    return names


def read_to_nowhere(image_api, context, image_id, metadata, fileobj, size,
                    instance, take_disk_ops=True, hashes=upload.BOTH):
    """upload.upload_file that reads and hashes the stream, sends nothing."""
    reader = upload.HashingReader(fileobj, progress.Progress(
        instance, 'upload', size,
        nova_env.CONF.snapdriver.progress_log_interval), hashes)
    # As glanceclient reads the image.
    while reader.read(glanceclient_http.CHUNKSIZE):
        pass


def hold_unread(seconds):
    """An upload.upload_file that waits ``seconds`` and reads nothing."""
    def upload_file(image_api, context, image_id, metadata, fileobj, size,
                    instance, take_disk_ops=True, hashes=upload.BOTH):
        time.sleep(seconds)
    return upload_file


def run_snapshot(bench, name, inst, bandwidth=0, writer=None,
                 domain_state=bench_report.RUNNING):
    """One snapshot with driver ``name`` and the given bandwidth limit."""
    if domain_state == bench_report.SHUTOFF and \
            inst.state() != libvirt.VIR_DOMAIN_SHUTOFF:
        raise RuntimeError('%s is not shut off' % inst.name)
    options = {'block_job_bandwidth': bandwidth}
    if name in (READ_ALONE, HASH_OFF, BACKUP_HELD):
        options['capture_method'] = 'stream'
        if name == HASH_OFF:
            options['verify_upload_hash'] = False
    elif name != 'in-tree':
        options['capture_method'] = name
    stand_in = {READ_ALONE: read_to_nowhere,
                BACKUP_HELD: hold_unread(writer.seconds if writer else 0)}
    with conf_options('snapdriver', **options), (
            mock.patch.object(upload, 'upload_file', stand_in[name])
            if name in stand_in else contextlib.nullcontext()):
        return snapshot(bench, name, inst, writer, domain_state)


def timing_runs(bench, inst, args, domain_state=bench_report.RUNNING):
    """Each driver, nothing else running, and the two floors; --repeat.

    The floors re-upload the first snapshot's image: right after that
    snapshot, and after the last driver of every round.  One upload alone
    varied by 10 % at 8 GiB and by up to 30 % at 1 GiB between cases of
    the same run, so with ``--repeat N`` every driver runs N times, in
    turn with the others and the floors, and each figure is the median
    (all walls are kept, and every run's CPU).  The two floors swap places
    at every upload, so neither always follows the other.  A driver's
    other figures (phases, transient, peak temp) are those of its median
    run; with one round a floor is the median, i.e. the mean, of its two
    uploads.  Each snapshot's image is deleted as soon as it is measured,
    so at most one is stored at a time.
    """
    runs = {name: [] for name in timed_drivers(args, domain_state)}
    floors = {name: [] for name in bench_report.FLOORS}
    path = disk_format = None

    def upload_floors():
        uploads = {
            bench_report.GLANCE_ONLY: lambda: glance_only(bench, path),
            bench_report.IMAGE_API_ONLY: lambda: image_api_only(
                bench, inst, path, disk_format)}
        order = list(bench_report.FLOORS)
        if len(floors[bench_report.GLANCE_ONLY]) % 2:
            order.reverse()
        for name in order:
            floors[name].append(uploads[name]())

    try:
        for _round in range(args.repeat):
            for name in timed_drivers(args, domain_state):
                result = run_snapshot(bench, name, inst,
                                      domain_state=domain_state)
                runs[name].append(result)
                if bench.pinning and domain_state == bench_report.SUSPEND:
                    # The managed save ended the QEMU pinned: pin its
                    # successor.
                    bench.pinning.pin_qemu(inst.qemu_pid())
                if path is None and name != READ_ALONE:
                    path = download(bench.glance, result['image_id'],
                                    args.workdir)
                    disk_format = bench.glance.images.get(
                        result['image_id']).disk_format
                    upload_floors()
                bench.glance.images.delete(result.pop('image_id'))
            upload_floors()
    finally:
        if path is not None:
            os.unlink(path)
    results = {}
    for name, done in floors.items():
        runs[name] = [{'wall': wall, 'cpu': cpu} for wall, cpu in done]
    for name, done in runs.items():
        walls = [r['wall'] for r in done]
        wall = statistics.median(walls)
        # The other figures are those of the run nearest the median.
        results[name] = dict(min(done, key=lambda r: abs(r['wall'] - wall)),
                             wall=wall, walls=walls)
        if 'down' in done[0]:
            results[name]['downs'] = [r['down'] for r in done]
        # Every run's CPU, in round order: the CPU ratios' intervals.
        cpus = [r['cpu'] for r in done if r.get('cpu')]
        if len(cpus) == len(done):
            results[name]['cpus'] = cpus
        rans = list(dict.fromkeys(r['ran'] for r in done if r.get('ran')))
        if len(rans) > 1:  # runs that took different paths: say so
            results[name]['ran'] = ' / '.join(rans)
    return results


def write_runs(bench, inst, args):
    """Guest write throughput during each driver's snapshot ÷ idle.

    And during Glance taking the first snapshot's image alone (the
    glance-only floor): what the guest loses to the upload on this host
    whatever the driver does, no snapshot running.  With ``--repeat N``
    each runs N times, in turn with the others (``repeated_writes``).
    With --backup-held-row, BACKUP_HELD too, after the stream.
    """
    runs = []
    path = None
    names = drivers_to_run(args)
    if 'stream' in names and getattr(args, 'backup_held_row', False):
        names.insert(names.index('stream') + 1, BACKUP_HELD)
    try:
        for _round in range(args.repeat):
            for name in names:
                limits = [0] + ([args.bandwidth] if name in LIMITED and
                                args.bandwidth else [])
                for bandwidth in limits:
                    idle = idle_write_throughput(inst, args.write_seconds)
                    writer = GuestWriter(inst.uuid, args.write_seconds)
                    result = run_snapshot(bench, name, inst, bandwidth,
                                          writer)
                    if path is None and name != BACKUP_HELD:
                        path = download(bench.glance, result['image_id'],
                                        args.workdir)
                    bench.glance.images.delete(result.pop('image_id'))
                    runs.append(written(name, bandwidth, idle, writer,
                                        result['wall'], result['peak_temp'],
                                        result['uploaded']))
            if path is not None:
                idle = idle_write_throughput(inst, args.write_seconds)
                writer = GuestWriter(inst.uuid, args.write_seconds)
                wall, _cpu = glance_only(bench, path, writer)
                runs.append(written(bench_report.GLANCE_ONLY, 0, idle,
                                    writer, wall))
    finally:
        if path is not None:
            os.unlink(path)
    return repeated_writes(runs)


def written(driver, bandwidth, idle, writer, wall, peak_temp=None,
            uploaded=None):
    """One write run's figures: a writes-table row before the median."""
    return {'driver': driver, 'bandwidth': bandwidth, 'idle': idle,
            'during': writer.throughput,
            'ratio': writer.throughput / idle, 'wall': wall,
            'peak_temp': peak_temp, 'uploaded': uploaded,
            'overwritten': min(writer.written, WRITE_WINDOW)}


def repeated_writes(runs):
    """One row per driver and bandwidth, in the order they first ran.

    Its ratio is the median of its runs' (all are kept in ``ratios``);
    its other figures are those of the run nearest that median.
    """
    rows = {}
    for run in runs:
        rows.setdefault((run['driver'], run['bandwidth']), []).append(run)
    out = []
    for done in rows.values():
        ratios = [r['ratio'] for r in done]
        ratio = statistics.median(ratios)
        out.append(dict(min(done, key=lambda r: abs(r['ratio'] - ratio)),
                        ratio=ratio, ratios=ratios))
    return out


def run_case(bench, size_gib, kind, layout, args, with_writes,
             domain_state=bench_report.RUNNING):
    """One case; guest writes only with the domain running (no save)."""
    inst = DataInstance(bench.conn, bench.boot, disk_mib=int(size_gib * 1024),
                        kind=kind, layout=layout,
                        image_ref=bench.booted_image_id)
    workarounds = {}
    if domain_state == bench_report.SUSPEND:
        workarounds['disable_libvirt_livesnapshot'] = True
    try:
        # Inside the try: a guest that never comes up is still destroyed.
        inst.start()
        if domain_state == bench_report.SHUTOFF:
            shut_off(inst)
        elif bench.pinning:
            bench.pinning.pin_qemu(inst.qemu_pid())
        with conf_options('workarounds', **workarounds):
            results = timing_runs(bench, inst, args, domain_state)
        writes = (write_runs(bench, inst, args)
                  if with_writes and domain_state == bench_report.RUNNING
                  else [])
    finally:
        inst.cleanup()
    return {'size_gib': size_gib, 'kind': kind, 'layout': layout,
            'state': domain_state, 'results': results, 'writes': writes}


# -- the test bed ---------------------------------------------------------

def option_default(name):
    """The default of a [snapdriver] option, as shipped."""
    return next(opt.default for opt in snap_conf.snapdriver_opts
                if opt.name == name)


class Bench(object):
    """What every snapshot of the run shares: services, drivers, dirs."""

    def __init__(self, workdir, glance_url, intree, compression):
        self.conn = libvirt.open(libvirtd.URI)
        nova_env.configure(workdir, glance_url,
                           virt_type=libvirtd.virt_type())
        # The test bed polls block jobs every 0.1 s to keep tests short;
        # time what an operator runs: the option's default.
        nova_env.CONF.set_override(
            'block_job_poll_interval',
            option_default('block_job_poll_interval'), 'snapdriver')
        if compression != 'none':
            nova_env.CONF.set_override('snapshot_compression', True,
                                       'libvirt')
            nova_env.CONF.set_override('compression_type', compression,
                                       'snapdriver')
        self.drivers = {'ours': nova_env.load_driver()}
        if intree:
            self.drivers['in-tree'] = nova_env.load_intree_driver()
        self.boot = test_guest.build_boot_files(GUEST_CACHE)
        self.snapshots_dir = nova_env.CONF.libvirt.snapshots_directory
        os.makedirs(self.snapshots_dir, exist_ok=True)
        self.context = nova_env.admin_context()
        self.image_api = nova_glance.API()
        self.glance = test_glance.client(glance_url)
        self.pinning = None  # a bench_pin.Pinning with --pin-glance
        # The image the instances booted from, as on a cloud: its record
        # tells the driver how Glance hashes (upload.hashes_for).
        booted = self.glance.images.create(
            name='bench-booted', disk_format='raw', container_format='bare')
        self.glance.images.upload(booted['id'], io.BytesIO(b'booted'))
        self.booted_image_id = booted['id']

    def close(self):
        nova_env.shutdown()
        self.conn.close()


# -- the whole run --------------------------------------------------------

def measure(args, on_case=None):
    """Set up the test bed, run every case, take it down: the cases.

    ``on_case(cases)``, if given, is called after each case with the cases
    so far (bench.py saves them, so an interrupted run keeps its figures).
    """
    args.workdir = tempfile.mkdtemp(prefix='snapdriver-bench-')
    # QEMU runs as a user of its own: it must enter the instances below.
    os.chmod(args.workdir, 0o711)
    libvirtd.ensure_running()
    glance = test_glance.GlanceServer(
        os.path.join(args.workdir, 'glance'),
        hashing_algorithm=getattr(args, 'glance_hash', 'sha512'))
    glance.start()
    cases = []
    bench = None
    try:
        test_instance.NovaInstance._next_id = 0x6000000 + os.getpid()
        bench = Bench(args.workdir, glance.url, not args.skip_intree,
                      args.compression)
        bench.glance_pgid = glance.pid
        if args.pin_glance is not None:
            bench.pinning = bench_pin.Pinning(args.pin_glance)
            bench.pinning.pin_bench(group_pids(glance.pid),
                                    libvirtd.pid())
            print('pinned: ' + bench.pinning.describe(), flush=True)
        for size in args.sizes:
            for kind in args.data:
                with_writes = args.write_seconds > 0 and kind == args.data[0]
                for layout in args.layout:
                    for domain_state in args.state:
                        print('case: %g GiB %s, data in the %s layer, '
                              'domain %s' % (size, kind, layout,
                                             domain_state), flush=True)
                        cases.append(run_case(bench, size, kind, layout,
                                              args, with_writes,
                                              domain_state))
                        if on_case:
                            on_case(cases)
    finally:
        if bench:
            if bench.pinning:
                bench.pinning.restore()
            bench.close()
        glance.stop()
        shutil.rmtree(args.workdir, ignore_errors=True)
    return cases
