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

"""The CPU of a stream's byte path alone, tree against tree.

What one change to the byte path saves is too small for ``tox -e bench``,
whose uploads vary by 10-30 %.  This reads a qcow2 disk the way a stream
does, without Glance: qemu-nbd exports it (as ``coldstream`` starts it),
``stream.reader`` lays the image out and reads it ahead, and the upload's
``HashingReader`` hashes it in glanceclient's 1 MiB reads.  Per read of the
whole disk it prints the CPU seconds per GiB of this process (user +
system, the read-ahead thread included) and of qemu-nbd, and the wall
time.

Each ``--tree`` is a checkout of this repository (``git worktree add``);
the trees take turns, one read each, ``--repeat`` times, in a child
process each, so that they meet the same machine.  The medians are printed
last.  Use ``--hash none`` to leave the hash (about 1.5 s/GiB of sha512
here) out of the figure:

    git worktree add --detach /tmp/before HEAD~1
    python tools/bench/bench_bytepath.py --tree /tmp/before --tree . \\
        --repeat 5 --hash none DISK.qcow2

Needs qemu-nbd and libnbd's binding; not part of the test suite.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import bench_cpu

MiB = 1024 * 1024
GiB = 1024 * MiB


class _Meter(object):
    def update(self, sent):
        pass


class _NoScratch(object):
    error = None

    def check(self):
        pass


class _Plan(object):
    image_format = 'qcow2'


def read_once(disk, algo):
    """Read ``disk`` as a stream does; a dict of what it cost."""
    from nova_snapdriver import stream
    from nova_snapdriver import upload

    argv = ['qemu-nbd', '--read-only', '--shared=1', '-f', 'qcow2', disk]
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    export = stream.Export(None, 'bytepath', None, argv)
    try:
        qemu_nbd = bench_cpu.child_pids(os.getpid())  # libnbd's qemu-nbd
        image, size = stream.reader(export, _Plan(), _NoScratch())
        hashing = upload.HashingReader(
            image, _Meter(), () if algo == 'none' else (algo,))
        while hashing.read(MiB):
            pass
        server = bench_cpu.cpu_seconds(qemu_nbd)
    finally:
        export.close()
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    ours = (after.ru_utime - before.ru_utime +
            after.ru_stime - before.ru_stime)
    return {'ours': ours * GiB / size, 'qemu-nbd': server * GiB / size,
            'wall': wall, 'size': size}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('disk', help='a qcow2 disk (its data is read)')
    parser.add_argument('--tree', action='append',
                        help='a checkout to measure (repeatable); '
                        'default: this one')
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--hash', default='sha512',
                        help='hashlib name, or none')
    parser.add_argument('--child', action='store_true',
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read_once(args.disk, args.hash)))
        return
    here = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    trees = [os.path.abspath(t) for t in args.tree or [here]]
    runs = {tree: [] for tree in trees}
    for _ in range(args.repeat):
        for tree in trees:
            env = dict(os.environ, PYTHONPATH=tree, PYTHONWARNINGS='ignore')
            out = subprocess.run(
                [sys.executable, os.path.abspath(__file__), '--child',
                 '--hash', args.hash, args.disk],
                env=env, cwd=tree, check=True, stdout=subprocess.PIPE,
                text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            runs[tree].append(run)
            print('%-30s ours %.2f s/GiB  qemu-nbd %.2f s/GiB  wall %.2f s'
                  % (tree, run['ours'], run['qemu-nbd'], run['wall']),
                  flush=True)
    print('medians of %d (hash %s):' % (args.repeat, args.hash))
    for tree, got in runs.items():
        print('%-30s ours %.2f s/GiB  qemu-nbd %.2f s/GiB  wall %.2f s'
              % (tree, statistics.median(r['ours'] for r in got),
                 statistics.median(r['qemu-nbd'] for r in got),
                 statistics.median(r['wall'] for r in got)))


if __name__ == '__main__':
    main()
