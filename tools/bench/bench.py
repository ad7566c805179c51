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

"""Benchmark the capture methods against nova 34's in-tree snapshot.

Real libvirtd + QEMU, a real glance-api on loopback (the functional test
bed, tests/testbed), one running instance per (disk size, data kind,
data layout) and, on that same domain in the same run: our driver with
each capture method, nova's in-tree ``LibvirtDriver.snapshot``, and two
floors: Glance ingesting the same final image alone, and nova's image API
calls of a snapshot sending it alone.  Per snapshot: wall time and
phases, seconds the domain was transient, peak temp space, bytes
uploaded; and the guest's write throughput during a snapshot ÷ idle.

The data layout is where the disk's data is: all in the instance's base
image (``base``), or mostly in the instance's own qcow2 layer
(``instance``), as a guest that wrote it leaves it; bench_measure.py says
more.  Images are not compressed unless --compression says so (then
nova's in-tree driver compresses with zlib, as [libvirt]
snapshot_compression makes it; ``stream`` is then left out: a stream is
never compressed, the driver would run copy or rebase in its place).

The domain's state (--state): ``running`` (the default: live
snapshots), ``shutoff`` (the domain shut off before the timed snapshots:
our cold stream, nova in-tree's qemu-img convert and upload, the
floors) and ``suspend`` (running, with ``[workarounds]
disable_libvirt_livesnapshot``: nova saves the guest for a cold
snapshot; the guest's downtime is measured).  Shut off or suspended,
only ``stream`` of the capture methods runs: rebase, copy and backup
are live capture methods, and cold each is nova's convert path, the
in-tree row.

This file is the entry point: the arguments, and the run.  What is
measured and how: tools/bench/bench_measure.py.  The tables, the plot and the
JSON: tools/bench/bench_report.py.

Writes bench.json, bench.md and bench.rst (tables of ratios; the docs
include bench.rst) and bench.png (needs matplotlib,
bench-requirements.txt) into --out.  Not
part of the test suite.  Needs root, like the functional tests.  Quote
ratios of one run, never absolute times.

The full run, both layouts, takes about 3 hours on 2 cores, quiet (the
two 8 GiB random cases took 83 minutes in the run committed on 2026-11-30
in 5f416f1, with Glance at ~77 MiB/s);
its work directory, under $TMPDIR, peaks at about 4x the largest disk (32
GiB at 8 GiB: the data, in the base or the instance's layer, the image in
Glance, its local copy and a floor's upload of it; or, in the instance
layout, the layer, rebase's or copy's copy of it, the image and Glance's):

    tox -e bench -- --sizes 1,4,8 --data random,compressible
    tox -e bench -- --sizes 1 --methods stream --repeat 5   (medians)
    tox -e bench -- --sizes 1 --methods stream --repeat 3 --hash-off-row

A short try: ``--sizes 1 --layout instance`` (about 5 minutes quiet, 10
on a busy machine; ``--sizes 0.25`` both layouts, about 6 busy).  Cold,
and the guest's downtime under the workaround:

    tox -e bench -- --sizes 1 --layout instance --state shutoff --repeat 3
    tox -e bench -- --sizes 1 --layout instance --state suspend --repeat 3

``--replot BENCH_JSON`` rewrites bench.json, bench.md, bench.rst and
bench.png from an earlier run's figures, without the test bed;
bench.json is saved after every case, so this works on an interrupted
run too.
"""

import argparse
import json
import os

import bench_measure
import bench_report


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--sizes', default='1',
                        help='disk sizes in GiB, comma separated (1,4,8; '
                        '0.25 for a quick try)')
    parser.add_argument('--data', default='random',
                        help='random,compressible (comma separated)')
    parser.add_argument('--methods', default=','.join(bench_measure.METHODS))
    parser.add_argument('--layout', default=','.join(bench_measure.LAYOUTS),
                        help='where the data is: base (the instance\'s base '
                        'image), instance (its own qcow2 layer; 64 MiB in '
                        'the base); comma separated')
    parser.add_argument('--state', default=bench_report.RUNNING,
                        help='the domain\'s state during the snapshots: '
                        'running (live), shutoff (cold), suspend (running, '
                        'with [workarounds] disable_libvirt_livesnapshot: '
                        'nova saves the guest; its downtime is reported); '
                        'comma separated.  Shut off or suspended, only '
                        'stream of --methods runs')
    parser.add_argument('--skip-intree', action='store_true')
    parser.add_argument('--repeat', type=int, default=1,
                        help='time each driver and the two floors this '
                        'many times per case, in turn; the tables show '
                        'medians (one upload alone varies by 10-30 %% '
                        'at 1 GiB)')
    parser.add_argument('--bandwidth', type=int, default=100,
                        help='[snapdriver] block_job_bandwidth (MiB/s) of '
                        'the limited guest-write runs; 0: none')
    parser.add_argument('--write-seconds', type=float, default=3.0,
                        help='length of each guest-write measurement; '
                        '0 skips them')
    parser.add_argument('--compression', choices=('none', 'zlib', 'zstd'),
                        default='none',
                        help='compress the images: [libvirt] '
                        'snapshot_compression (nova in-tree: zlib) and '
                        '[snapdriver] compression_type (ours)')
    parser.add_argument('--pin-glance', type=int, metavar='CPU',
                        help='run glance-api on this CPU alone and the '
                        'rest (the bench, QEMU, libvirtd) on the others, '
                        'as a cloud keeps Glance off its compute hosts '
                        '(tools/bench/bench_pin.py)')
    parser.add_argument('--glance-hash', default='sha512',
                        metavar='ALGO',
                        help='Glance\'s hashing_algorithm (its default: '
                        'sha512); a stream hashes its upload with it, '
                        'to verify what Glance stored')
    parser.add_argument('--hash-off-row', action='store_true',
                        help='also time a stream with [snapdriver] '
                        'verify_upload_hash = False, in turn with the '
                        'others: what verifying the upload costs')
    parser.add_argument('--backup-held-row', action='store_true',
                        help='with the guest\'s writes, also a stream '
                        'whose backup is held for --write-seconds while '
                        'nothing is read: what the copy-before-write '
                        'alone costs the guest')
    parser.add_argument('--out', default='bench-results')
    parser.add_argument('--replot', metavar='BENCH_JSON',
                        help='only rewrite the files in --out from the '
                        'figures of an earlier run')
    args = parser.parse_args()
    args.sizes = [float(s) for s in args.sizes.split(',') if s]
    args.data = [k for k in args.data.split(',') if k]
    for kind in args.data:
        bench_measure.data_chunk(kind)  # an unknown kind fails now
    args.layout = [k for k in args.layout.split(',') if k]
    for layout in args.layout:
        if layout not in bench_measure.LAYOUTS:
            parser.error('unknown layout %r (%s)' % (
                layout, ', '.join(bench_measure.LAYOUTS)))
    args.state = [k for k in args.state.split(',') if k]
    for domain_state in args.state:
        if domain_state not in bench_report.STATES:
            parser.error('unknown state %r (%s)' % (
                domain_state, ', '.join(bench_report.STATES)))
    args.methods = [m for m in args.methods.split(',') if m]
    if args.repeat < 1:
        parser.error('--repeat must be at least 1')
    if args.compression != 'none' and 'stream' in args.methods:
        # The driver never compresses a stream: it would time copy.
        print('--compression: stream left out (a stream is never compressed)')
        args.methods.remove('stream')
    for domain_state in args.state:
        left_out = [m for m in args.methods if m not in
                    bench_report.methods_in_state(args.methods, domain_state)]
        if left_out:
            print('--state %s: %s left out (live capture methods; cold, '
                  'each is nova\'s convert path, the in-tree row)'
                  % (domain_state, ', '.join(left_out)))
    return args


def main():
    args = parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(args.replot) as f:
            earlier = json.load(f)
        # Runs from before --layout measured the base layout only.
        # and runs from before --state, the domain running.
        args.__dict__.update(layout=['base'], state=[bench_report.RUNNING])
        args.__dict__.update(earlier['args'], out=args.out)
        bench_report.report(earlier['cases'], args)
        return
    # bench.json is saved after every case: an interrupted run keeps what
    # it measured, and --replot turns that into tables and a plot.
    cases = bench_measure.measure(
        args, on_case=lambda cases: bench_report.save_json(cases, args))
    bench_report.report(cases, args)


if __name__ == '__main__':
    main()
