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

"""nova's private API, reached from this one module.

The driver subclasses nova's ``LibvirtDriver`` and needs some of its
insides: nova has no public API for them.  Every private nova name the
package uses is here, each with what it is for, and nothing else in
``nova_snapdriver`` touches one.  Each was read in, and the unit tier run
against, the nova releases this driver supports::

    31.3.1 (2025.1)  32.2.1 (2025.2)  33.0.2 (2026.1)  34.0.0 (2026.2)

A name that differs between them is resolved here, and says how.  Before
supporting another release, read its ``virt/libvirt/driver.py``
(``snapshot``, ``_live_snapshot``), ``guest.py``, ``host.py``,
``virt/libvirt/utils.py``, ``compute/utils.py`` and ``privsep/qemu.py``
for the names below.

"""

import queue
import sys
import threading

import glanceclient.exc

from nova.compute import utils as compute_utils
from nova import exception as nova_exception
from nova.image import glance as nova_glance
from nova.privsep import qemu as nova_qemu
from nova import utils as nova_utils
from nova.virt.libvirt import utils as libvirt_utils

RELEASES_CHECKED = ('31.3.1', '32.2.1', '33.0.2', '34.0.0')


# --- the driver's own parts ---------------------------------------------

def host(driver):
    """``LibvirtDriver._host``: nova's ``Host``, the libvirt connection."""
    return driver._host


def image_api(driver):
    """``LibvirtDriver._image_api``: nova's Glance API (``glance.API``)."""
    return driver._image_api


def snapshot_metadata(driver, image_meta, instance, image_format, name):
    """``LibvirtDriver._create_snapshot_metadata``: the image's properties.

    The same call nova's ``snapshot()`` makes, so the image is labelled
    exactly as nova labels it.
    """
    return driver._create_snapshot_metadata(image_meta, instance,
                                            image_format, name)


def requires_quiesce(driver, image_meta):
    """``LibvirtDriver._requires_quiesce``: ``os_require_quiesce`` set."""
    return driver._requires_quiesce(image_meta)


def can_quiesce(driver, instance, image_meta):
    """``LibvirtDriver._can_quiesce``: raises if it cannot quiesce."""
    return driver._can_quiesce(instance, image_meta)


def undefine(driver, guest):
    """``LibvirtDriver._delete_guest_configuration``, keeping vTPM and NVRAM.

    How nova's ``_live_snapshot`` undefines the domain before its copy
    (the same signature in 31 to 34).
    """
    driver._delete_guest_configuration(guest, keep_vtpm=True,
                                       keep_nvram=True)


def resume_after_snapshot(driver, context, instance, guest, state):
    """``LibvirtDriver._resume_guest_after_snapshot`` of a cold snapshot.

    How nova starts a guest it suspended (``suspend``, managed save) for
    a snapshot under ``[workarounds] disable_libvirt_livesnapshot``: its
    CPUs powered up, ``Guest.launch`` (libvirt restores the saved state,
    running or paused as it was), its PCI devices and direct ports
    attached again.  ``state``: the power state before the suspend.
    Read in 31.3.1 and 34.0.0 (the same signature and body).
    """
    driver._resume_guest_after_snapshot(context, False, state, instance,
                                        guest)


def domain(guest):
    """``Guest._domain``: the libvirt ``virDomain`` behind nova's ``Guest``.

    For the calls nova's ``Guest`` does not wrap (backups, block copy with
    flags, job statistics).
    """
    return guest._domain


# --- helpers nova keeps in its own modules -------------------------------

def find_disk(guest):
    """``libvirt_utils.find_disk``: (path, format) of the root disk."""
    return libvirt_utils.find_disk(guest)


def disk_type_from_path(path):
    """``libvirt_utils.get_disk_type_from_path``: 'rbd', 'lvm' or None."""
    return libvirt_utils.get_disk_type_from_path(path)


def qemu_img_limits():
    """``nova.privsep.qemu.QEMU_IMG_LIMITS``: the prlimit of qemu-img.

    What nova itself runs ``qemu-img info`` under (a header that asks for
    too much memory or CPU is cut short).
    """
    return nova_qemu.QEMU_IMG_LIMITS


def disk_ops_semaphore():
    """``compute_utils.disk_ops_semaphore``: ``max_concurrent_disk_ops``.

    Read at each use: nova-compute replaces the module's semaphore once
    its configuration is read.
    """
    return compute_utils.disk_ops_semaphore


# --- OS threads, under eventlet too ----------------------------------------

def os_threads():
    """``(threading, queue)`` of the OS's threads, eventlet or not.

    nova 31 to 33 start nova-compute monkey-patched by eventlet
    (``nova/cmd/compute.py``), where ``threading`` makes green threads of
    one hub.  A stream reads its NBD export on a thread of its own while
    nova's image API reads the stream in a native thread of eventlet's
    pool (``tpool``): those two must be OS threads with OS locks, as
    eventlet's own ``tpool`` uses (``eventlet.patcher.original``).
    """
    if not eventlet_threads():
        return threading, queue
    from eventlet import patcher
    return patcher.original('threading'), patcher.original('queue')


def wait_natively(func, *args):
    """``func(*args)`` where it may block on an OS thread or lock.

    Under eventlet in a native thread of its pool (``tpool.execute``), so
    that the other green threads of nova-compute (its RPC, its heartbeat)
    run meanwhile; a plain call otherwise.
    """
    if not eventlet_threads():
        return func(*args)
    from eventlet import tpool
    return tpool.execute(func, *args)


def native_domain(domain):
    """The ``virDomain`` itself, not eventlet's ``tpool.Proxy`` of it.

    nova's ``Host`` wraps libvirt in ``tpool.Proxy`` under eventlet
    (``utils.tpool_wrap`` in 33 and 34, ``tpool.Proxy`` in 31 and 32); a
    call through the proxy from an OS thread of our own waits for a green
    event it cannot wait for.  libvirt's handles may be used from any OS
    thread.  ``Proxy._obj`` is the wrapped object (eventlet 0.39 to 0.41).
    """
    if not eventlet_threads():
        return domain
    from eventlet import tpool
    while isinstance(domain, tpool.Proxy):
        domain = domain._obj
    return domain


def eventlet_threads():
    """True if eventlet monkey-patched ``threading`` in this process."""
    if 'eventlet' not in sys.modules:
        return False
    from eventlet import patcher
    return patcher.is_monkey_patched('thread')


# --- nova's Glance client -------------------------------------------------

#: What nova's Glance client retries (``GlanceClientWrapper.call``, the
#: same four in 31 to 34): a connection that failed or broke, a 503.
GLANCE_RETRYABLE = (glanceclient.exc.HTTPServiceUnavailable,
                    glanceclient.exc.InvalidEndpoint,
                    glanceclient.exc.CommunicationError,
                    IOError)


class GlanceUploader(object):
    """Sends an image's data to Glance, one attempt per ``send``.

    nova's ``GlanceClientWrapper.call`` retries an upload itself, handing
    glanceclient the same file object again; ``upload`` keeps the
    attempts instead, so that each one gets a reader at its first byte.
    Each attempt is made as nova makes its own:

    - ``GlanceClientWrapper._create_onetime_client``: a client for the
      request's context, on the next of the Glance API servers (nova's
      round robin over ``[glance] api_servers`` or the catalog);
    - ``nova.utils.tpool_wrap`` (33, 34) or ``tpool_execute`` (31, 32):
      under eventlet the upload runs in a native thread, as nova's
      ``GlanceImageServiceV2._upload_data`` runs it;
    - ``nova.image.glance._translate_image_exception``: Glance's HTTP
      errors become nova's (``ImageNotFound`` when the image was deleted
      meanwhile, which the compute manager expects).
    """

    def __init__(self, context):
        self._context = context
        self._wrapper = nova_glance.GlanceClientWrapper()

    @property
    def server(self):
        """The Glance API server of the last attempt."""
        return getattr(self._wrapper, 'api_server', None)

    def send(self, image_id, data):
        """One attempt, no retry; raises nova's exception for Glance's."""
        client = self._wrapper._create_onetime_client(self._context, 2)
        try:
            _in_native_thread(client.images.upload, image_id, data)
        except GLANCE_RETRYABLE:
            raise
        except glanceclient.exc.HTTPException as e:
            raise nova_glance._translate_image_exception(image_id, e)

    def gave_up(self, reason):
        """nova's error when the last attempt failed (as its client's)."""
        return nova_exception.GlanceConnectionFailed(
            server=str(self.server), reason=str(reason))


def _in_native_thread(func, *args):
    wrap = getattr(nova_utils, 'tpool_wrap', None)
    if wrap is not None:
        return wrap(func)(*args)
    return nova_utils.tpool_execute(func, *args)
