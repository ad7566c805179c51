#!/usr/bin/env python3
"""Write ab.rst, the A/B table doc/source/benchmark.rst includes, from ab.json.

ab.json holds, per condition, six timed 1 GiB uploads (random data,
instance layout, the conditions in rotating order, nothing else running):
each run's wall seconds and CPU seconds.  The table gives the median wall
time per condition and its ratio to the first condition (the
image-API-only floor).  Run from anywhere:

    python3 doc/benchmark/2026-12-01-1g-instance-glance-cpu-ab/ab_table.py
"""

import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))
CONDITIONS = (
    ('api-file', "nova's image API uploading the image from a file (the "
     "``image-API-only`` floor)"),
    ('api-hashing', "the same, the file read through the driver's "
     "``HashingReader`` (sha512 and md5 of every byte, inline, as a stream "
     "hashes)"),
    ('stream', 'a stream snapshot of the instance'),
    ('api-file+read-alone', 'the floor again, while another thread runs '
     '``stream (read alone)`` snapshots of the instance back to back'),
)


def main():
    with open(os.path.join(HERE, 'ab.json')) as f:
        runs = json.load(f)
    floor = statistics.median(r['wall'] for r in runs[CONDITIONS[0][0]])
    out = ['.. Written by ab_table.py from ab.json.', '',
           '.. list-table::', '   :header-rows: 1', '',
           '   * - condition', '     - runs', '     - wall s (median)',
           '     - ÷ the floor']
    for key, text in CONDITIONS:
        wall = statistics.median(r['wall'] for r in runs[key])
        out += ['   * - %s' % text, '     - %d' % len(runs[key]),
                '     - %.1f' % wall, '     - %.2f' % (wall / floor)]
    with open(os.path.join(HERE, 'ab.rst'), 'w') as f:
        f.write('\n'.join(out) + '\n')


if __name__ == '__main__':
    main()
