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

"""A running or paused guest saved while its disk is streamed.

``[workarounds] disable_libvirt_livesnapshot``: operators set it where
live snapshots crash guests.  nova's in-tree driver then saves the guest
(managed save: its memory to a file libvirt keeps, QEMU gone), converts
the disk into a temp image, starts the guest again, and uploads.  With
``capture_method`` stream (``plan.suspend_unavailable``; auto leaves it to
nova, whose outage is the shorter), this driver saves the guest the same
way, streams the disk as a shut-off disk is streamed (``coldstream``: no
temp image), and starts the guest again as soon as the stream has read the
disk's last byte.  So the guest is down while the upload reads the disk
(the stream reads as Glance takes it), where nova's is down for its
convert; Glance's finishing and the hash check run with the guest up
again.

The save and the start are nova's own calls (``LibvirtDriver.suspend``;
``novacompat.resume_after_snapshot``): PCI devices, direct ports and
mediated devices are detached and attached again as nova does, and a
paused guest comes back paused.

The journal knows: ``saved`` is written true before the save and false
once the guest runs again.  If the start fails, here and in the
``finally`` alike, the record is kept, and ``recovery`` starts a domain
that has a managed-save image and a record that says we saved it.
"""

import contextlib
import time

from nova.compute import power_state
from oslo_log import log as logging
from oslo_utils import excutils

from nova_snapdriver import exception
from nova_snapdriver import novacompat

LOG = logging.getLogger(__name__)


class Suspension(object):
    """One guest saved for one snapshot, and started again once.

    ``state``: its power state before the save (running or paused).
    ``step(name, **fields)``: the driver's journal step.
    """

    def __init__(self, driver, context, instance, guest, state, step):
        self.driver = driver
        self.context = context
        self.instance = instance
        self.guest = guest
        self.state = state
        self._step = step
        self.saved_at = None  # when the save began: the guest stops there
        self.restored = False
        self.downtime = None

    def save(self):
        """Save the guest as nova does (``LibvirtDriver.suspend``)."""
        # Journalled first: from now on the domain may be saved, and
        # recovery must know that it is ours to start again.
        self._step('suspending', saved=True)
        self.saved_at = time.monotonic()
        self.driver.suspend(self.context, self.instance)
        LOG.info('Guest suspended (managed save) for its snapshot in '
                 '%(secs).2fs', {'secs': time.monotonic() - self.saved_at},
                 instance=self.instance)
        self._step('suspended')

    def restore(self):
        """Start the guest again as nova does; once.  Raises if it fails."""
        if self.restored or self.saved_at is None:
            return
        start = time.monotonic()
        if self.guest.is_active():
            # The save failed: the guest never stopped.
            LOG.warning('The guest is still running: it was not suspended',
                        instance=self.instance)
        else:
            novacompat.resume_after_snapshot(
                self.driver, self.context, self.instance, self.guest,
                self.state)
        now = time.monotonic()
        self.restored = True
        self.downtime = now - self.saved_at
        LOG.info('Guest %(state)s again: suspended for %(down).2fs '
                 '(its start took %(secs).2fs)',
                 {'state': 'paused' if self.state == power_state.PAUSED
                  else 'running', 'down': self.downtime,
                  'secs': now - start}, instance=self.instance)
        self._step('restored', saved=False)

    def restore_soon(self):
        """``restore`` as the stream's last byte is read; never raises.

        It runs inside the upload's read: a failure there is logged, and
        the ``finally`` of ``suspended`` tries again once the upload is
        over.
        """
        try:
            self.restore()
        except Exception as e:
            LOG.error('Restoring the guest from its managed save failed '
                      '(%(error)s); trying again once the upload is over',
                      {'error': e}, instance=self.instance)


@contextlib.contextmanager
def suspended(driver, context, instance, guest, state, step):
    """The guest saved for the body, and started again whatever happens.

    Yields the ``Suspension``: the body may start the guest earlier
    (``restore_soon``).  An error of the body is the one raised; a start
    that fails after a body that did not raises ``GuestNotRestored``.
    Either way the journal record keeps ``saved`` true for recovery.
    """
    suspension = Suspension(driver, context, instance, guest, state, step)
    try:
        suspension.save()
        yield suspension
    except Exception:
        with excutils.save_and_reraise_exception():
            try:
                suspension.restore()
            except Exception:
                LOG.exception('Restoring the guest from its managed save '
                              'failed; the journal record is kept for '
                              'recovery', instance=instance)
    else:
        try:
            suspension.restore()
        except Exception as e:
            LOG.exception('Restoring the guest from its managed save '
                          'failed; the journal record is kept for recovery',
                          instance=instance)
            raise exception.GuestNotRestored(
                instance_uuid=instance.uuid, name=instance.name,
                reason=e) from e
