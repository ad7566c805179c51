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

"""glance-api killed (kill -9) during the upload, and started again.

Real libvirtd, QEMU and glance-api; nova's own retry loop (``[glance]
num_retries``) and glanceclient.  What the driver promises:

- whatever happens to Glance, the instance is untouched (persistent,
  running, same disk), the snapshots directory is empty and no journal
  record is left;
- when nova's image API retries the upload, the file is sent again from
  its first byte, so a retry that Glance accepts stores the whole image
  and verifies.

Glance accepts a retry only if it never began to store the first attempt:
a glance-api killed while it stores an upload leaves the image in
``saving``, and the restarted Glance refuses the retry with 409 ("Image
status transition from saving to saving is not allowed"), which nova does
not retry.  The retry that can succeed is that of an upload still waiting
for a busy Glance (one worker, here held by another client) when Glance
was restarted.
"""

import os
import signal
import socket
import threading
import time

import glanceclient.exc
from glanceclient.v2 import images as glance_images
import libvirt
import pytest

from nova import exception as nova_exception

from nova_snapdriver import journal
from tests.testbed import checks

MiB = 1024 * 1024
WAIT = 30


def no_task_state(**kwargs):
    pass


def kill_glance(glance):
    """kill -9 glance-api's gunicorn, master and worker; reap them."""
    os.killpg(glance._proc.pid, signal.SIGKILL)
    glance.stop()
    assert not glance.is_running()


def stored_path(glance, image_id):
    """Where Glance's filesystem store writes the image's data."""
    return os.path.join(glance.workdir, 'images', image_id)


def wait_for(predicate, what, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError('timed out waiting for %s' % what)
        time.sleep(0.05)


def assert_nothing_left(inst, reference, snapshots_dir, image_id):
    assert inst.is_persistent(), 'domain left transient'
    assert inst.state() == libvirt.VIR_DOMAIN_RUNNING
    assert checks.block_jobs(inst.lookup()) == {}
    assert checks.same_content(inst.disk_path, reference)
    assert checks.leftovers(snapshots_dir) == []
    assert not os.path.exists(
        os.path.join(journal.directory(), image_id + '.json'))


class Upload(object):
    """What the progress listener saw of one instance's upload."""

    def __init__(self, uuid):
        self.uuid = uuid
        self.updates = []

    def __call__(self, uuid, phase, done, total):
        if uuid == self.uuid and phase == 'upload':
            self.updates.append((time.monotonic(), done))

    @property
    def read(self):
        return self.updates[-1][1] if self.updates else 0

    def restarts(self):
        """Bytes read before each time the upload began again at 0."""
        seen, restarts = 0, []
        for _, done in self.updates:
            if done == 0 and seen:
                restarts.append(seen)
            seen = done
        return restarts


@pytest.fixture
def image(make_image, instance, glance, glance_client):
    image = make_image(instance)
    yield image
    glance.start()  # if a test left it down
    try:  # the compute manager's job after a failed snapshot
        glance_client.images.delete(image['id'])
    except glanceclient.exc.HTTPNotFound:
        pass


class WhileStoring(Upload):
    """Once 4 MiB were read and Glance is storing them, run ``action``."""

    def __init__(self, uuid, glance, image_id, action):
        super(WhileStoring, self).__init__(uuid)
        self.stored = stored_path(glance, image_id)
        self.action = action
        self.done_at = None

    def __call__(self, uuid, phase, done, total):
        super(WhileStoring, self).__call__(uuid, phase, done, total)
        if (uuid == self.uuid and phase == 'upload' and done >= 4 * MiB and
                self.done_at is None):
            wait_for(lambda: os.path.exists(self.stored),
                     'Glance to store the upload')
            self.action()
            self.done_at = done


# rebase stages a file that nova's image API reads; backup too, written by
# QEMU; stream reads the running disk over NBD into the upload.
METHODS = ('rebase', 'backup', 'stream')


@pytest.mark.parametrize('method', METHODS)
def test_glance_killed_mid_upload(
        method, driver, context, conf, instance, image, glance, listener,
        reference, snapshots_dir):
    conf('glance', num_retries=1)
    conf('snapdriver', capture_method=method)
    upload = WhileStoring(instance.uuid, glance, image['id'],
                          lambda: kill_glance(glance))
    listener(upload)

    with pytest.raises(nova_exception.GlanceConnectionFailed) as err:
        driver.snapshot(context, instance.obj, image['id'], no_task_state)

    assert upload.done_at, 'the upload ended before Glance was killed'
    assert 'Connection refused' in str(err.value)
    # nova's one retry found Glance down: nothing was read for it.
    assert upload.restarts() == []
    assert_nothing_left(instance, reference, snapshots_dir, image['id'])


def test_glance_restarted_while_it_stored_the_upload_refuses_the_retry(
        driver, context, conf, instance, image, glance, glance_client,
        listener, reference, snapshots_dir):
    conf('glance', num_retries=2)

    def restart():
        kill_glance(glance)
        glance.start()
    upload = WhileStoring(instance.uuid, glance, image['id'], restart)
    listener(upload)

    with pytest.raises(glanceclient.exc.HTTPConflict) as err:
        driver.snapshot(context, instance.obj, image['id'], no_task_state)

    assert upload.done_at, 'the upload ended before Glance was restarted'
    # Glance's limit, not the driver's: the killed upload left the image
    # in 'saving', and an image is uploaded only from 'queued'.
    assert 'from saving to saving is not allowed' in str(err.value)
    assert glance_client.images.get(image['id']).status == 'saving'
    assert_nothing_left(instance, reference, snapshots_dir, image['id'])


class BusyGlance(object):
    """Another client holding glance-api's only worker.

    The test Glance runs one worker with one thread; this request never
    ends, so the next one waits in the listen queue, unread by Glance.
    """

    def __init__(self, glance):
        self.sock = socket.create_connection(('127.0.0.1', glance.port))
        self.sock.sendall(b'GET /versions HTTP/1.1\r\nHost: 127.0.0.1\r\n')

    def close(self):
        self.sock.close()


@pytest.mark.parametrize('method', METHODS)
def test_glance_restarted_between_nova_retries_gets_the_whole_image(
        method, driver, context, conf, instance, image, glance,
        glance_client, listener, reference, snapshots_dir, workdir,
        monkeypatch):
    # nova sleeps 1 s between attempts; Glance takes a few to start.
    conf('glance', num_retries=20)
    conf('snapdriver', capture_method=method)
    upload = Upload(instance.uuid)
    listener(upload)
    busy = []
    original = glance_images.Controller.upload

    def upload_behind_a_busy_glance(self, image_id, *args, **kwargs):
        if not busy:
            busy.append(BusyGlance(glance))
        return original(self, image_id, *args, **kwargs)
    monkeypatch.setattr(glance_images.Controller, 'upload',
                        upload_behind_a_busy_glance)
    restart = {}

    def restart_glance():
        try:
            # The upload is under way: its first bytes were read.  Glance's
            # only worker is held, so it can neither store nor finish them.
            wait_for(lambda: upload.read > 0, 'the upload to start')
            assert not os.path.exists(stored_path(glance, image['id']))
            kill_glance(glance)
            glance.start()
            restart['up'] = True
        except BaseException as e:
            restart['error'] = e
    thread = threading.Thread(target=restart_glance, daemon=True)
    thread.start()
    try:
        driver.snapshot(context, instance.obj, image['id'], no_task_state)
    finally:
        thread.join(WAIT)
        for b in busy:
            b.close()
    assert 'error' not in restart, restart.get('error')
    assert restart.get('up')

    # Sent again from the first byte, once, after part of the image.
    first, = upload.restarts()
    assert 0 < first <= upload.read
    stored = glance_client.images.get(image['id'])
    assert stored.status == 'active'
    path = checks.download(glance_client, image['id'],
                           os.path.join(workdir, image['id'] + '.glance'))
    try:
        assert stored.size == os.path.getsize(path) == upload.read
        assert checks.same_content(path, reference,
                                   a_fmt=stored.disk_format)
    finally:
        os.unlink(path)
    assert_nothing_left(instance, reference, snapshots_dir, image['id'])
