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

"""``tools/minicloud/minicloud methods``: did each snapshot run the method
asked for?

The driver falls back from ``stream`` to another capture method, with a
warning, on a host that cannot stream (libnbd missing, nova not in QEMU's
group).  A cloud that fell back would still pass every image
test, so this reads nova-compute's log and checks each live snapshot's
plan against the ``capture_method`` that nova-compute started with (the
driver logs it in ``init_host``; a test may restart nova-compute with
another).  ``auto`` must pick ``stream`` here, as on any host that
streams.  At least one live snapshot must have been planned.

It also counts the snapshots whose upload was hashed once, with the
algorithm Glance reports, against those hashed both ways (sha512 and
md5, where the instance's image was not in Glance): the cloud's images
are, so at least one must have been hashed once.
"""

import re

from minicloud_lib.config import path

STARTED = re.compile(r'nova-snapdriver takes the snapshots on this host: '
                     r'capture_method = (\w+)')
PLANNED = re.compile(r'Planned (live|cold) snapshot \(capture method (\w+)')
HASHED = re.compile(r' image hashed with (\w+)( and \w+)?: needs ')


def expected(configured):
    """The method a live snapshot must run with ``configured``."""
    return 'stream' if configured == 'auto' else configured


def check(lines):
    """(live snapshots per method, problems) of nova-compute's log lines."""
    configured = None
    counts = {}
    problems = []
    for number, line in enumerate(lines, 1):
        started = STARTED.search(line)
        if started:
            configured = started.group(1)
            continue
        planned = PLANNED.search(line)
        if not planned or planned.group(1) != 'live':
            continue
        method = planned.group(2)
        counts[method] = counts.get(method, 0) + 1
        if configured is None:
            problems.append('line %d: a live snapshot planned before '
                            'nova-compute said which method it takes'
                            % number)
        elif method != expected(configured):
            problems.append('line %d: capture_method %s, but the live '
                            'snapshot ran %s (a fallback: the warning '
                            'before it says why)'
                            % (number, configured, method))
    if not counts:
        problems.append('no live snapshot was planned')
    return counts, problems


def hashing(lines):
    """(snapshots hashed once, snapshots hashed with two algorithms)."""
    once = both = 0
    for line in lines:
        hashed = HASHED.search(line)
        if hashed and hashed.group(2):
            both += 1
        elif hashed:
            once += 1
    return once, both


def cmd_methods(args):
    with open(path('log', 'nova-compute.log'), errors='replace') as f:
        lines = list(f)
    counts, problems = check(lines)
    once, both = hashing(lines)
    if not once:
        problems.append('no upload was hashed once with Glance\'s '
                        'algorithm (%d hashed both ways)' % both)
    print('minicloud: live snapshots by capture method: %s' % (
        ', '.join('%s %d' % kv for kv in sorted(counts.items())) or 'none'))
    print('minicloud: uploads hashed once: %d, both ways: %d'
          % (once, both))
    for problem in problems:
        print('minicloud: %s' % problem)
    return 1 if problems else 0
