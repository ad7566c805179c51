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

"""The verdict of ``tools/minicloud/minicloud tempest`` on a run it did not
fail.

tools/minicloud/minicloud_lib/tempest.py reads what ``tempest run`` printed:
stestr's
subunit-trace lines (stestr/subunit_trace.py show_outcome, stestr 4.2.1 as
tools/tempest/tempest-constraints.txt pins it), e.g.::

    {0} <id> [1.234567s] ... ok
    {1} <id> ... SKIPPED: <reason>

with tempest's tags ('[id-<uuid>,smoke]') cut out of the id.  A class whose
setUpClass raises SkipTest is ONE skipped pseudo-test, which unittest's
TestSuite._handleClassSetUp names 'setUpClass (<module>.<class>)', and none
of its tests has a line: that must fail the run, as must a test tempest
lists for the run's regex that got no line, and a skip that
tests/e2e/tempest-skips.txt does not explain.

TRACE is written in that shape; RealStestrTestCase makes the same kinds of
results with the stestr, subunit and testtools of this virtualenv (the
versions tempest's venv pins) to show the shape is what they print.

tools/ is not a package: as tests/unit/test_minicloud_network.py does, this
module appends it to sys.path and imports minicloud_lib.tempest.
"""

import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

from minicloud_lib import tempest

MOD = 'tempest.api.compute.images.'
PASSED = MOD + 'test_images_oneserver.ImagesOneServerTestJSON.' \
    'test_create_delete_image'
ALLOWED = MOD + 'test_images_oneserver.ImagesOneServerTestJSON.' \
    'test_create_image_specify_multibyte_character_image_name'
UNLISTED = MOD + 'test_image_metadata.ImagesMetadataTestJSON.' \
    'test_list_image_metadata'
SKIPPED_CLASS = MOD + 'test_images.ImagesTestJSON'
CLASS_REASON = 'Snapshotting is not available.'
# The tests of SKIPPED_CLASS, as 'tempest run --list-tests' lists them.
CLASS_TESTS = [
    SKIPPED_CLASS + '.test_create_image_from_paused_server'
    '[id-71bcb732-0261-11e7-9086-fa163e4fa634]',
    SKIPPED_CLASS + '.test_delete_saving_image'
    '[id-aa06b52b-2db5-4807-b218-9441f75d74e3]',
]

TRACE = """\
{0} %(passed)s [12.345678s] ... ok
{1} %(allowed)s ... SKIPPED: Multibyte names are not supported here
{1} %(unlisted)s ... SKIPPED: Glance v1 is not available
{0} setUpClass (%(cls)s) ... SKIPPED: %(reason)s

======
Totals
======
Ran: 4 tests in 30.0000 sec.
 - Passed: 1
 - Skipped: 3
 - Expected Fail: 0
 - Unexpected Success: 0
 - Failed: 0
Sum of execute time for each test: 12.3457 sec.
""" % {'passed': PASSED, 'allowed': ALLOWED, 'unlisted': UNLISTED,
       'cls': SKIPPED_CLASS, 'reason': CLASS_REASON}

# stestr list: one id a line, tags kept.
LISTING = '\n'.join([
    PASSED + '[id-3731d080-d4c5-4872-b41a-64d0d0021314]',
    ALLOWED + '[id-3b7c6fe4-dfe7-477c-9243-b06359db51e6]',
    UNLISTED + '[id-37ec6edd-cf30-4c53-bd45-ae74db6b0531]',
] + CLASS_TESTS) + '\n'


class ParseTestCase(unittest.TestCase):

    def test_every_result_line_with_its_status(self):
        self.assertEqual(
            [(PASSED, 'ok', ''),
             (ALLOWED, 'skip', 'Multibyte names are not supported here'),
             (UNLISTED, 'skip', 'Glance v1 is not available'),
             ('setUpClass (%s)' % SKIPPED_CLASS, 'skip', CLASS_REASON)],
            tempest.parse_results(TRACE))

    def test_tags_failures_and_a_skip_without_reason(self):
        out = ('{0} a.B.test_x[id-1,smoke] [0.1s] ... ok\n'
               '{1} a.B.test_y [0.2s] ... FAILED\n'
               '{1} a.B.test_z ... SKIPPED\n'
               '{0} a.B.test_w [] ... inprogress\n')
        self.assertEqual([('a.B.test_x', 'ok', ''),
                          ('a.B.test_y', 'FAILED', ''),
                          ('a.B.test_z', 'skip', ''),
                          ('a.B.test_w', 'inprogress', '')],
                         tempest.parse_results(out))

    def test_listed_tests_drop_tags_and_other_lines(self):
        listing = ('Some warning printed on stdout\n' + LISTING +
                   'other.module.Test.test_x[id-1]\n\n')
        self.assertEqual(
            sorted([PASSED, ALLOWED, UNLISTED] +
                   [tempest.strip_tags(t) for t in CLASS_TESTS]),
            tempest.listed_tests(listing, tempest.TEMPEST_REGEX))

    def test_allowed_skips_file(self):
        with tempfile.NamedTemporaryFile('w', suffix='.txt') as f:
            f.write('# comment\n#\n\n%s  it cannot run here\n'
                    'a.B.test_y[id-1]  tags are ignored\n' % ALLOWED)
            f.flush()
            self.assertEqual({ALLOWED, 'a.B.test_y'},
                             tempest.load_allowed_skips(f.name))
        # The real file parses.
        self.assertIsInstance(tempest.load_allowed_skips(), set)


class VerdictTestCase(unittest.TestCase):

    def test_pass_and_allowed_skip_accepted(self):
        out = '\n'.join(TRACE.splitlines()[:2]) + '\n'
        self.assertEqual([], tempest.check_run(
            out, [PASSED, ALLOWED], {ALLOWED}))

    def test_unlisted_skip_fails(self):
        out = '\n'.join(TRACE.splitlines()[:3]) + '\n'
        problems = tempest.check_run(out, [PASSED, ALLOWED, UNLISTED],
                                     {ALLOWED})
        self.assertEqual(1, len(problems), problems)
        self.assertIn('not explained', problems[0])
        self.assertIn(UNLISTED, problems[0])

    def test_class_level_skip_fails_naming_class_and_reason(self):
        problems = tempest.check_run(TRACE, None, {ALLOWED, UNLISTED})
        self.assertEqual(
            ['class %s skipped as a whole in setUpClass (none of its tests '
             'ran): %s' % (SKIPPED_CLASS, CLASS_REASON)], problems)

    def test_class_level_skip_fails_whatever_the_file_allows(self):
        allowed = {ALLOWED, UNLISTED, SKIPPED_CLASS,
                   'setUpClass', 'setUpClass (%s)' % SKIPPED_CLASS}
        allowed.update(tempest.strip_tags(t) for t in CLASS_TESTS)
        problems = tempest.check_run(TRACE, None, allowed)
        self.assertEqual(1, len(problems), problems)
        self.assertIn(SKIPPED_CLASS, problems[0])

    def test_class_split_over_workers_is_given_once(self):
        line = '{%%d} setUpClass (%s) ... SKIPPED: %s\n' % (
            SKIPPED_CLASS, CLASS_REASON)
        self.assertEqual(1, len(tempest.check_run(
            line % 0 + line % 1, None, set())))

    def test_module_level_skip_fails(self):
        out = '{0} setUpModule (%s.test_images) ... SKIPPED: no\n' % MOD[:-1]
        self.assertEqual(['module %s.test_images skipped as a whole in '
                          'setUpModule (none of its tests ran): no'
                          % MOD[:-1]],
                         tempest.check_run(out, None, set()))

    def test_all_problems_of_the_run(self):
        expected = tempest.listed_tests(LISTING, tempest.TEMPEST_REGEX)
        problems = tempest.check_run(TRACE, expected, {ALLOWED})
        self.assertEqual(
            ['class %s skipped as a whole in setUpClass (none of its tests '
             'ran): %s' % (SKIPPED_CLASS, CLASS_REASON),
             'skipped, not explained in %s: %s' % (tempest.TEMPEST_SKIPS,
                                                   UNLISTED)] +
            ['listed but no result (not run): %s' % tempest.strip_tags(t)
             for t in CLASS_TESTS], problems)

    def test_listed_test_without_result_fails(self):
        # No setUpClass line at all (say a lost worker): the listing alone
        # catches the class's tests.
        out = '\n'.join(TRACE.splitlines()[:2]) + '\n'
        expected = [PASSED, ALLOWED, tempest.strip_tags(CLASS_TESTS[0])]
        self.assertEqual(
            ['listed but no result (not run): %s'
             % tempest.strip_tags(CLASS_TESTS[0])],
            tempest.check_run(out, expected, {ALLOWED}))

    def test_empty_listing_fails(self):
        out = '\n'.join(TRACE.splitlines()[:1]) + '\n'
        self.assertEqual(['tempest listed no test for the regex'],
                         tempest.check_run(out, [], set()))


FAKE_TESTS = '''\
import testtools
from testtools import testcase


def idempotent_id(uuid):
    # tempest.lib.decorators.idempotent_id: the id as a tag of the test id.
    return testcase.attr('id-' + uuid)


class BaseTestCase(testcase.WithAttributes, testtools.TestCase):
    # tempest.test.BaseTestCase: setUpClass calls skip_checks, which raises
    # cls.skipException to skip the class.

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.skip_checks()

    @classmethod
    def skip_checks(cls):
        pass


class ImagesOneServerTestJSON(BaseTestCase):

    @idempotent_id('3731d080-d4c5-4872-b41a-64d0d0021314')
    def test_create_delete_image(self):
        pass

    @idempotent_id('3b7c6fe4-dfe7-477c-9243-b06359db51e6')
    def test_allowed_skip(self):
        self.skipTest('Multibyte names are not supported here')

    @idempotent_id('37ec6edd-cf30-4c53-bd45-ae74db6b0531')
    def test_unlisted_skip(self):
        self.skipTest('Glance v1 is not available')


class ImagesTestJSON(BaseTestCase):

    @classmethod
    def skip_checks(cls):
        super().skip_checks()
        raise cls.skipException('Snapshotting is not available.')

    @idempotent_id('71bcb732-0261-11e7-9086-fa163e4fa634')
    def test_create_image_from_paused_server(self):
        pass

    @idempotent_id('aa06b52b-2db5-4807-b218-9441f75d74e3')
    def test_delete_saving_image(self):
        pass
'''


@unittest.skipUnless(importlib.util.find_spec('stestr'),
                     'stestr is not installed')
class RealStestrTestCase(unittest.TestCase):
    """The same verdicts on what stestr really prints (as tempest run).

    tempest run is stestr's run and list commands (tempest/cmd/run.py):
    here they run two test classes shaped as tempest's, in a temporary
    directory, with this interpreter.
    """

    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self._tmp.cleanup)
        self.dir = self._tmp.name
        os.mkdir(os.path.join(self.dir, 'faketempest'))
        with open(os.path.join(self.dir, 'faketempest', '__init__.py'),
                  'w'):
            pass
        with open(os.path.join(self.dir, 'faketempest', 'test_images.py'),
                  'w') as f:
            f.write(FAKE_TESTS)
        # tempest init's (tempest/cmd/init.py STESTR_CONF): a class's
        # tests run in one worker.
        with open(os.path.join(self.dir, '.stestr.conf'), 'w') as f:
            f.write(textwrap.dedent('''\
                [DEFAULT]
                test_path=./faketempest
                top_dir=./
                group_regex=([^\\.]*\\.)*
                '''))

    def stestr(self, *args):
        env = dict(os.environ, PYTHON=sys.executable)
        res = subprocess.run([sys.executable, '-m', 'stestr'] + list(args),
                             cwd=self.dir, env=env, capture_output=True,
                             text=True, timeout=300)
        self.assertEqual(0, res.returncode, res.stdout + res.stderr)
        return res.stdout

    def test_verdicts(self):
        regex = r'^faketempest\.'
        # As tempest init does (tempest/cmd/init.py).
        self.stestr('init')
        listing = self.stestr('list', regex)
        output = self.stestr('run', '--concurrency', '2', regex)
        cls = 'faketempest.test_images.ImagesTestJSON'
        one = 'faketempest.test_images.ImagesOneServerTestJSON.'
        # The shape TRACE has.
        self.assertRegex(output, r'(?m)^\{\d\} setUpClass \(%s\) \.\.\. '
                         r'SKIPPED: Snapshotting is not available\.$'
                         % cls.replace('.', r'\.'))
        self.assertRegex(output, r'(?m)^\{\d\} %stest_create_delete_image '
                         r'\[[\d.]+s\] \.\.\. ok$' % one.replace('.', r'\.'))
        self.assertNotIn('test_delete_saving_image', output)
        expected = tempest.listed_tests(listing, regex)
        self.assertEqual(
            sorted([one + 'test_allowed_skip',
                    one + 'test_create_delete_image',
                    one + 'test_unlisted_skip',
                    cls + '.test_create_image_from_paused_server',
                    cls + '.test_delete_saving_image']), expected)
        self.assertEqual(
            ['class %s skipped as a whole in setUpClass (none of its tests '
             'ran): Snapshotting is not available.' % cls,
             'skipped, not explained in %s: %stest_unlisted_skip'
             % (tempest.TEMPEST_SKIPS, one),
             'listed but no result (not run): %s.'
             'test_create_image_from_paused_server' % cls,
             'listed but no result (not run): %s.test_delete_saving_image'
             % cls],
            tempest.check_run(output, expected, {one + 'test_allowed_skip'}))
