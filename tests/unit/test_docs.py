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

"""The operator's docs stay current and consistent with the code.

Reads files only (no services, no Sphinx build):

- no work-period name ("session 9", "sessions 7-9", "session-9") in the
  README, doc/, tools/ or releasenotes/: runs and directories are named by
  what they are and their date;
- every ratio (``0.52 ×``, ``1.05 x``) and every ``N minutes`` in the
  README is a figure doc/source/benchmark.rst (with the tables it
  includes) or doc/source/testing.rst holds: one source for each figure;
- doc/source/troubleshooting.rst names every error nova_snapdriver/
  exception.py defines;
- every relative link in the README points at a file that exists.
"""

import inspect
import os
import re

from nova import exception as nova_exception
import pytest

from nova_snapdriver import exception

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
README = os.path.join(ROOT, 'README.md')
DOC_SOURCE = os.path.join(ROOT, 'doc', 'source')
BENCHMARK = os.path.join(DOC_SOURCE, 'benchmark.rst')
TESTING = os.path.join(DOC_SOURCE, 'testing.rst')
TROUBLESHOOTING = os.path.join(DOC_SOURCE, 'troubleshooting.rst')

# Where a work-period name must not appear; build output is not ours.
SCANNED = ('README.md', 'doc', 'tools', 'releasenotes')
SKIPPED_DIRS = {'build', '__pycache__'}
WORK_PERIOD = re.compile(r'sessions? [0-9]|session-[0-9]', re.IGNORECASE)

# "0.52 ×", "0.52-0.57 ×", "1.05 x": a ratio, one figure or a range.
RATIO = re.compile(r'(\d+\.\d+)(?:\s*-\s*(\d+\.\d+))?\s*(?:×|x\b)')
MINUTES = re.compile(r'(\d+(?:\.\d+)?)\s+minutes\b')
NUMBER = re.compile(r'\d+\.\d+')
INCLUDE = re.compile(r'^\s*\.\. (?:literal)?include:: (\S+)', re.MULTILINE)
LINK = re.compile(r'\]\(([^)\s]+)\)')


def read(path):
    with open(path, encoding='utf-8') as f:
        return f.read()


def text_files():
    """(path relative to the root, text) of every text file scanned."""
    for top in SCANNED:
        path = os.path.join(ROOT, top)
        if os.path.isfile(path):
            yield top, read(path)
            continue
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if d not in SKIPPED_DIRS]
            for name in filenames:
                full = os.path.join(dirpath, name)
                try:
                    text = read(full)
                except UnicodeDecodeError:
                    continue  # a plot, not text
                yield os.path.relpath(full, ROOT), text


def with_includes(path):
    """An RST page's text followed by every file it (literal)includes."""
    text = read(path)
    parts = [text]
    for target in INCLUDE.findall(text):
        parts.append(read(os.path.normpath(
            os.path.join(os.path.dirname(path), target))))
    return '\n'.join(parts)


def squeeze(text):
    return re.sub(r'\s+', ' ', text)


def test_no_work_period_names():
    found = ['%s:%d: %s' % (path, text.count('\n', 0, m.start()) + 1,
                            m.group(0))
             for path, text in text_files()
             for m in WORK_PERIOD.finditer(text)]
    assert found == [], ('name runs by what they are and their date, not '
                         'by a work period')


def test_readme_ratios_are_the_benchmark_pages():
    held = set(NUMBER.findall(with_includes(BENCHMARK)))
    readme = read(README)
    quoted = [n for m in RATIO.finditer(readme) for n in m.groups() if n]
    assert quoted, 'the README quotes no ratio: is RATIO still right?'
    missing = sorted(set(quoted) - held)
    assert missing == [], ('README ratios that doc/source/benchmark.rst '
                           'and its tables do not hold: %s' % missing)


def test_readme_minutes_are_the_docs():
    pages = squeeze(with_includes(BENCHMARK) + ' ' + read(TESTING))
    missing = [n for n in MINUTES.findall(read(README))
               if not re.search(r'(?<![\d.])%s minutes\b' % re.escape(n),
                                pages)]
    assert missing == [], ('README durations that doc/source/testing.rst '
                           'and benchmark.rst do not hold: %s' % missing)


def errors_defined():
    return sorted(name for name, cls in inspect.getmembers(
        exception, inspect.isclass)
        if issubclass(cls, nova_exception.NovaException) and
        cls.__module__ == exception.__name__)


def test_errors_found():
    assert 'SnapshotError' in errors_defined()


@pytest.mark.parametrize('name', errors_defined())
def test_troubleshooting_names_every_error(name):
    assert '``%s``' % name in read(TROUBLESHOOTING), (
        'doc/source/troubleshooting.rst does not say what %s means and '
        'what to do about it' % name)


def test_readme_links_exist():
    broken = []
    for target in LINK.findall(read(README)):
        if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue  # a URL or an anchor
        path = target.split('#', 1)[0]
        if not os.path.exists(os.path.join(ROOT, path)):
            broken.append(target)
    assert broken == [], 'README links to files that do not exist'


def test_every_error_message_points_to_the_troubleshooting_page():
    from nova_snapdriver import exception
    error = exception.BackupFailed(disk='vda', instance_uuid='u',
                                   reason='was cancelled')
    assert str(error).endswith('(nova-snapdriver BackupFailed: see '
                               'Troubleshooting in its documentation)')
    assert error.format_message() == str(error)
