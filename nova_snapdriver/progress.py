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

"""Progress and timing of a snapshot, for the log and for listeners.

The compute log gets one line per phase with its duration, and throttled
percent lines for the two long phases (the block copy and the upload).  A
program that embeds the driver (the demo draws a progress bar) can add a
listener; listeners see every update, unthrottled.
"""

import contextlib
import time

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

# Callables taking (instance_uuid, phase, done, total); see ``listen()``.
_listeners = []


def listen(callback):
    """Call ``callback(instance_uuid, phase, done, total)`` on every update.

    ``phase`` is a phase name ('copy', 'upload') with bytes done of total;
    ``'<phase>:done'`` (or ``'<phase>:failed'``) when a phase ends, then
    ``done`` is its duration in seconds and ``total`` is None; or
    ``'step:<name>'`` right after the snapshot journaled that it reached
    step ``name`` (see ``journal``).
    """
    _listeners.append(callback)


def unlisten(callback):
    _listeners.remove(callback)


def _notify(instance, phase, done, total):
    for callback in list(_listeners):
        try:
            callback(instance.uuid, phase, done, total)
        except Exception:
            LOG.exception('Progress listener failed; ignoring it')


def notify_step(instance, name):
    """A step of the snapshot was journaled: tell listeners 'step:<name>'."""
    _notify(instance, 'step:' + name, 0, None)


def human_size(nbytes):
    """1536 -> '1.5 KiB': sizes an operator reads at a glance."""
    size = float(nbytes)
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(size) < 1024 or unit == 'GiB':
            break
        size /= 1024
    if unit == 'B':
        return '%d B' % nbytes
    return '%.1f %s' % (size, unit)


class Progress(object):
    """Percent-done of one long step, logged at most every ``interval`` s."""

    def __init__(self, instance, phase, total, interval):
        self.instance = instance
        self.phase = phase
        self.total = total
        self.interval = interval
        self._last_log = time.monotonic()

    def update(self, done, total=None):
        if total is not None:
            self.total = total
        _notify(self.instance, self.phase, done, self.total)
        now = time.monotonic()
        if now - self._last_log < self.interval:
            return
        self._last_log = now
        percent = 100 * done // self.total if self.total else 0
        LOG.info('Snapshot %(phase)s: %(percent)d%% (%(done)s of '
                 '%(total)s)',
                 {'phase': self.phase, 'percent': percent,
                  'done': human_size(done),
                  'total': human_size(self.total or 0)},
                 instance=self.instance)


class PhaseClock(object):
    """Times the phases of one snapshot and logs each one as it ends."""

    def __init__(self, instance):
        self.instance = instance
        self.durations = {}
        self._start = time.monotonic()

    @contextlib.contextmanager
    def phase(self, name):
        start = time.monotonic()
        LOG.debug('Snapshot phase %(phase)s starting',
                  {'phase': name}, instance=self.instance)
        outcome = 'failed'
        try:
            yield
            outcome = 'done'
        finally:
            secs = time.monotonic() - start
            self.durations[name] = secs
            _notify(self.instance, '%s:%s' % (name, outcome), secs, None)
            LOG.info('Snapshot phase %(phase)s %(how)s %(secs).2fs',
                     {'phase': name, 'secs': secs,
                      'how': 'took' if outcome == 'done' else 'failed after'},
                     instance=self.instance)

    def summary(self):
        """'12.3s (plan 0.1s, capture 2.0s, ...)' for the final log line."""
        total = time.monotonic() - self._start
        parts = ', '.join('%s %.1fs' % (name, secs)
                          for name, secs in self.durations.items())
        return '%.1fs (%s)' % (total, parts)
