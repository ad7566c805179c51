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

"""Every log line a snapshot writes names its instance.

An operator follows one snapshot through nova-compute's log by its
``[instance: <uuid>]`` prefix, which oslo.log adds when a call passes
``instance=``.  This reads the source of the modules a snapshot runs
through and fails on any LOG call that does not pass it, with the few
that are about no one snapshot listed below, and why.
"""

import ast
import os
import unittest

import nova_snapdriver

PACKAGE = os.path.dirname(nova_snapdriver.__file__)
# The modules of a snapshot's phases.
SNAPSHOT_PATH = ('blockjob', 'capture', 'driver', 'extract', 'plan',
                 'stream', 'upload')
LEVELS = ('debug', 'info', 'warning', 'error', 'exception', 'critical')
# (module, the call's first words): lines about no one snapshot.
NOT_ONE_SNAPSHOT = {
    # Recovery of every journal record, at start-up or periodically.
    ('driver', 'Recovering interrupted snapshots'),
    ('driver', 'Looked at %(n)d interrupted snapshot'),
    # At nova-compute's start: which driver takes this host's snapshots.
    ('driver', 'nova-snapdriver takes the snapshots on this host'),
    # Probing the host's libvirt, once, for capture_method auto.
    ('plan', 'Cannot read the domain capabilities'),
}


def log_calls(module):
    """(line, first words, keyword names) of each LOG.<level>() call."""
    path = os.path.join(PACKAGE, module + '.py')
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and
                isinstance(node.func, ast.Attribute) and
                isinstance(node.func.value, ast.Name) and
                node.func.value.id == 'LOG' and
                node.func.attr in LEVELS):
            first = node.args[0] if node.args else None
            words = first.value if isinstance(first, ast.Constant) else ''
            yield node.lineno, words, {k.arg for k in node.keywords}


class TestInstanceScopedLogs(unittest.TestCase):

    def test_snapshot_logs_name_the_instance(self):
        missing = []
        for module in SNAPSHOT_PATH:
            for line, words, keywords in log_calls(module):
                if 'instance' in keywords:
                    continue
                if any(module == m and words.startswith(w)
                       for m, w in NOT_ONE_SNAPSHOT):
                    continue
                missing.append('%s.py:%d %r' % (module, line, words[:50]))
        self.assertEqual([], missing)

    def test_the_exceptions_are_still_there(self):
        # An exception left behind after its call went would hide a new
        # call that starts the same way.
        found = {(module, w) for module in SNAPSHOT_PATH
                 for _line, words, _kw in log_calls(module)
                 for m, w in NOT_ONE_SNAPSHOT
                 if m == module and words.startswith(w)}
        self.assertEqual(NOT_ONE_SNAPSHOT, found)
