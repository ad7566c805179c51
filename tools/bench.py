#!/usr/bin/env python3
"""Benchmark the capture methods against nova 34's in-tree snapshot.

Real libvirtd + QEMU, a real glance-api on loopback (the functional test
bed, tests/testbed), one running instance per (disk size, data kind) and,
on that same domain in the same run: our driver with each capture method,
nova's in-tree ``LibvirtDriver.snapshot``, and the floor, Glance ingesting
the same final image alone.  Per run: wall time (and our phases), seconds
the domain was transient (isPersistent polled every 20 ms), peak space
used in the snapshots directory (polled), bytes uploaded.

Writes bench.json, bench.md (ratios, pasteable in the README) and, when
matplotlib is installed, bench.png into --out.  Not part of the test suite:
``tox -e bench`` (or ``tools/bench.py --sizes 1,4,8``).  Needs root, like
the functional tests.  Quote ratios of one run, never absolute times.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))

from tests.testbed import nova_env  # noqa: E402,I100 (nova.tests first)

import libvirt  # noqa: E402
from nova.compute import utils as compute_utils  # noqa: E402
from nova.image import glance as nova_glance  # noqa: E402

from nova_snapdriver import progress  # noqa: E402
from tests.testbed import glance as test_glance  # noqa: E402
from tests.testbed import guest as test_guest  # noqa: E402
from tests.testbed import instance as test_instance  # noqa: E402
from tests.testbed import libvirtd  # noqa: E402

GiB = 1024 ** 3
MiB = 1024 ** 2
METHODS = ('rebase', 'copy', 'backup')
GUEST_CACHE = os.environ.get('SNAPDRIVER_GUEST_CACHE',
                             '/var/tmp/nova-snapdriver-guest')


class DataInstance(test_instance.NovaInstance):
    """A test instance whose base holds ``kind`` data up to its end."""

    def __init__(self, *args, kind='random', **kwargs):
        super(DataInstance, self).__init__(*args, **kwargs)
        self.kind = kind

    def create_disks(self):
        super(DataInstance, self).create_disks()
        start = test_guest.MARKER_BASE
        with open(self.base_path, 'r+b') as f:
            f.seek(start)
            chunk = (os.urandom(MiB) if self.kind == 'random' else
                     b'nova-snapdriver compressible data. ' * (MiB // 35 + 1))
            left = self.disk_size - start
            while left > 0:
                if self.kind == 'random':
                    chunk = os.urandom(MiB)
                f.write(chunk[:min(MiB, left)])
                left -= MiB


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


def snapshot(driver, context, image_api, inst, snapshots_dir, glance_client):
    image = compute_utils.create_image(context, inst.obj, 'bench',
                                       'snapshot', image_api)
    phases = {}

    def on_phase(uuid, phase, done, total):
        if phase.endswith(':done') and uuid == inst.uuid:
            phases[phase[:-5]] = done
    progress.listen(on_phase)
    watcher = Watcher(inst.uuid, snapshots_dir)
    watcher.start()
    start = time.monotonic()
    try:
        driver.snapshot(context, inst.obj, image['id'], lambda **kw: None)
    finally:
        wall = time.monotonic() - start
        watcher.stop()
        progress.unlisten(on_phase)
    size = glance_client.images.get(image['id']).size
    return {'wall': wall, 'phases': phases, 'transient': watcher.transient,
            'peak_temp': watcher.peak, 'uploaded': size,
            'image_id': image['id']}


def glance_only(glance_client, image_id, workdir):
    """The floor: upload the same bytes to a new image, nothing else."""
    path = os.path.join(workdir, 'floor.img')
    with open(path, 'wb') as f:
        for chunk in glance_client.images.data(image_id):
            f.write(chunk)
    image = glance_client.images.create(name='floor', disk_format='qcow2',
                                        container_format='bare')
    start = time.monotonic()
    with open(path, 'rb') as f:
        glance_client.images.upload(image['id'], f)
    wall = time.monotonic() - start
    glance_client.images.delete(image['id'])
    os.unlink(path)
    return wall


def run_case(size_gib, kind, args, env):
    conn, boot, context, image_api, glance_client, snaps = env
    inst = DataInstance(conn, boot, disk_mib=size_gib * 1024, kind=kind)
    inst.start()
    results = {}
    try:
        for method in args.methods:
            nova_env.CONF.set_override('capture_method', method, 'snapdriver')
            results[method] = snapshot(env_driver['ours'], context, image_api,
                                       inst, snaps, glance_client)
        nova_env.CONF.clear_override('capture_method', 'snapdriver')
        if not args.skip_intree:
            results['in-tree'] = snapshot(
                env_driver['intree'], context, image_api, inst, snaps,
                glance_client)
        some = next(iter(results.values()))
        results['glance-only'] = {'wall': glance_only(
            glance_client, some['image_id'], args.workdir)}
        for r in results.values():
            if 'image_id' in r:
                glance_client.images.delete(r.pop('image_id'))
    finally:
        inst.cleanup()
    return {'size_gib': size_gib, 'kind': kind, 'results': results}


env_driver = {}


def table(cases):
    rows = ['| disk | data | method | wall s | ÷ glance-only | ÷ in-tree | '
            'transient s | peak temp ÷ image |',
            '|---|---|---|---|---|---|---|---|']
    for case in cases:
        res = case['results']
        floor = res['glance-only']['wall']
        intree = res.get('in-tree', {}).get('wall')
        for name, r in res.items():
            if name == 'glance-only':
                continue
            rows.append('| %d GiB | %s | %s | %.1f | %.2f | %s | %.2f | %.2f |'
                        % (case['size_gib'], case['kind'], name, r['wall'],
                           r['wall'] / floor,
                           '%.2f' % (r['wall'] / intree) if intree else '-',
                           r['transient'],
                           r['peak_temp'] / max(r['uploaded'] or 1, 1)))
    return '\n'.join(rows) + '\n'


def plot(cases, path):
    try:
        import matplotlib
        matplotlib.use('Agg')
        from matplotlib import pyplot
    except ImportError:
        print('matplotlib is not installed: no plot')
        return
    labels, walls, floors = [], [], []
    for case in cases:
        for name, r in case['results'].items():
            if name == 'glance-only':
                continue
            labels.append('%dG %s\n%s' % (case['size_gib'], case['kind'],
                                          name))
            walls.append(r['wall'])
            floors.append(case['results']['glance-only']['wall'])
    fig, ax = pyplot.subplots(figsize=(max(6, len(labels)), 4))
    ax.bar(range(len(labels)), walls, label='snapshot wall time')
    ax.plot(range(len(labels)), floors, 'r_', markersize=30,
            label='glance-only floor')
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel('seconds')
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='1',
                        help='disk sizes in GiB, comma separated (1,4,8)')
    parser.add_argument('--data', default='random',
                        help='random,compressible (comma separated)')
    parser.add_argument('--methods', default=','.join(METHODS))
    parser.add_argument('--skip-intree', action='store_true')
    parser.add_argument('--out', default='bench-results')
    args = parser.parse_args()
    args.methods = [m for m in args.methods.split(',') if m]
    os.makedirs(args.out, exist_ok=True)
    args.workdir = tempfile.mkdtemp(prefix='snapdriver-bench-')
    libvirtd.ensure_running()
    conn = libvirt.open(libvirtd.URI)
    glance = test_glance.GlanceServer(os.path.join(args.workdir, 'glance'))
    glance.start()
    cases = []
    try:
        nova_env.configure(args.workdir, glance.url,
                           virt_type=libvirtd.virt_type())
        test_instance.NovaInstance._next_id = 0x6000000 + os.getpid()
        env_driver['ours'] = nova_env.load_driver()
        if not args.skip_intree:
            env_driver['intree'] = nova_env.load_intree_driver()
        boot = test_guest.build_boot_files(GUEST_CACHE)
        snaps = nova_env.CONF.libvirt.snapshots_directory
        os.makedirs(snaps, exist_ok=True)
        env = (conn, boot, nova_env.admin_context(), nova_glance.API(),
               test_glance.client(glance.url), snaps)
        for size in [int(s) for s in args.sizes.split(',')]:
            for kind in args.data.split(','):
                print('case: %d GiB %s' % (size, kind), flush=True)
                cases.append(run_case(size, kind, args, env))
    finally:
        nova_env.shutdown()
        glance.stop()
        conn.close()
        shutil.rmtree(args.workdir, ignore_errors=True)
    with open(os.path.join(args.out, 'bench.json'), 'w') as f:
        json.dump(cases, f, indent=1)
    md = table(cases)
    with open(os.path.join(args.out, 'bench.md'), 'w') as f:
        f.write(md)
    plot(cases, os.path.join(args.out, 'bench.png'))
    print(md)


if __name__ == '__main__':
    main()
