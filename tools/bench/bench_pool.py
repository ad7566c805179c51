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

"""Pool the paired ratios of several bench runs, per disk size.

One upload to Glance alone varies by 10-30 % here, so the median of three
or five runs of one case cannot tell 1.03 from 1.10.  This reads the
bench.json of several runs (tools/bench/bench.py, with --repeat), takes every
run of a method ÷ the floor uploads around it (``paired_ratios`` in
tools/bench/bench_report.py), pools them per disk size over data kinds, layouts
and runs, and prints the median with a 90 % bootstrap interval for it:
the median of the ratios resampled with replacement, 2,000 times, with a
fixed seed, so the same files always print the same table.  With
``--floor image-API-only``, only runs that measured that floor count.
With ``--method image-API-only``, a floor, each of its uploads ÷ the
``--floor`` upload next to it (``side_by_side_ratios``).  Only cases
of one domain state are pooled: ``--state``, running unless it says
otherwise (a cold snapshot's ratios are not a live one's).

    tools/bench/bench_pool.py doc/benchmark/*-instance*/bench.json
    tools/bench/bench_pool.py --method stream --floor image-API-only \\
        doc/benchmark/*-instance*/bench.json

Pool only runs of the same driver code: which runs those are is for the
reader to say (doc/source/benchmark.rst does, and keeps this tool's
output of them in doc/benchmark/pooled-ratios.txt).  Reads figures alone; no
test bed.
"""

import argparse
import json
import random
import statistics

import bench_report

RESAMPLES = 2000
SEED = 0


def ratios_by_size(runs, method, floor, state=bench_report.RUNNING):
    """{size_gib: [ratio, ...]} of ``method`` ÷ ``floor``, paired.

    Cases of domain ``state`` only.
    """
    pooled = {}
    for cases in runs:
        for case in cases:
            if bench_report.state(case) != state:
                continue
            res = case['results']
            walls = res.get(method, {}).get('walls', [])
            floor_walls = res.get(floor, {}).get('walls', [])
            if method in bench_report.FLOORS:
                ratios = bench_report.side_by_side_ratios(walls,
                                                          floor_walls)
            else:
                ratios = bench_report.paired_ratios(walls, floor_walls)
            pooled.setdefault(case['size_gib'], []).extend(ratios)
    return {size: ratios for size, ratios in pooled.items() if ratios}


def interval(ratios, resamples=RESAMPLES, seed=SEED):
    """90 % bootstrap interval of the median of ``ratios``: (low, high)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(ratios, k=len(ratios)))
                     for _ in range(resamples))
    return (medians[int(0.05 * resamples)],
            medians[int(0.95 * resamples) - 1])


def pool_table(runs, method, floor, state=bench_report.RUNNING):
    rows = ['| disk | %s ÷ %s | runs | median | 90 %% interval of the '
            'median | lowest-highest |' % (method, floor),
            '|---|---|---|---|---|---|']
    how = ('side by side' if method in bench_report.FLOORS else 'paired')
    pooled = ratios_by_size(runs, method, floor, state)
    for size, ratios in sorted(pooled.items()):
        low, high = interval(ratios)
        rows.append('| %g GiB | %s | %d | %.3f | %.3f-%.3f | '
                    '%.2f-%.2f |' % (size, how, len(ratios),
                                     statistics.median(ratios), low, high,
                                     min(ratios), max(ratios)))
    return '\n'.join(rows) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('bench_json', nargs='+')
    parser.add_argument('--method', default='stream',
                        help='a driver row (stream, in-tree, ...) or a '
                        'floor (then ÷ the other floor, upload by upload)')
    parser.add_argument('--floor', default=bench_report.GLANCE_ONLY,
                        choices=bench_report.FLOORS)
    parser.add_argument('--state', default=bench_report.RUNNING,
                        choices=bench_report.STATES,
                        help='pool the cases of this domain state only')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.method == args.floor:
        raise SystemExit('--method and --floor are the same row')
    runs = []
    for path in args.bench_json:
        with open(path) as f:
            runs.append(json.load(f)['cases'])
    print(pool_table(runs, args.method, args.floor, args.state), end='')


if __name__ == '__main__':
    main()
