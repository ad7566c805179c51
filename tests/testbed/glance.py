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

"""A real, keystone-less glance-api on loopback for functional tests.

Glance's own ``glance-api`` script no longer serves requests, so the WSGI
application runs under gunicorn (see glance_wsgi.py).  Everything lives
under one work directory: configuration, sqlite database, image files and
the server log.  The database is created once per work directory, so a
server can be stopped (to make Glance fail on purpose) and started again
on the same port with its images still there.

Glance keeps its state in sqlite, which locks under concurrent requests:
hence one worker with one thread.
"""

import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import glanceclient

LOG = logging.getLogger(__name__)

START_TIMEOUT = 30
STOP_TIMEOUT = 5
PASTE_INI = 'glance-api-paste.ini'
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))

CONF_TEMPLATE = """\
[DEFAULT]
debug = {debug}
hashing_algorithm = {hashing_algorithm}
enabled_backends = fs:file
image_cache_dir = {workdir}/cache
worker_self_reference_url = {url}

[database]
connection = sqlite:///{workdir}/glance.sqlite

[glance_store]
default_backend = fs

[fs]
filesystem_store_datadir = {workdir}/images

[os_glance_staging_store]
filesystem_store_datadir = {workdir}/staging

[os_glance_tasks_store]
filesystem_store_datadir = {workdir}/tasks

[oslo_concurrency]
lock_path = {workdir}/locks

[oslo_policy]
enforce_new_defaults = False

[image_format]
# Glance's default, stated: uploads whose data does not match disk_format,
# or a qcow2 with a backing or data file, are refused.
require_image_format_match = True

[paste_deploy]
flavor =
config_file = {workdir}/etc/{paste}
"""


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _find_paste_ini():
    """The stock paste file that ships with the installed Glance."""
    candidates = [os.path.join(sys.prefix, 'etc', 'glance'),
                  '/usr/local/etc/glance', '/etc/glance']
    for d in candidates:
        path = os.path.join(d, PASTE_INI)
        if os.path.isfile(path):
            return path
    raise RuntimeError('no %s in any of %s' % (PASTE_INI, candidates))


def client(url):
    """An unauthenticated python-glanceclient v2 client for `url`.

    The version goes into the URL: ``Client('2', ...)`` still works but
    emits a DeprecationWarning.  The token is never checked.
    """
    return glanceclient.Client(endpoint=url + '/v2', token='x')


@functools.lru_cache(maxsize=None)
def _no_control_socket():
    """gunicorn 25's control socket, off; older ones have none (2025.x).

    The tests' older release envs run the gunicorn of their release's
    upper-constraints (23.0.0 for 2025.1 and 2025.2).
    """
    proc = subprocess.run([sys.executable, '-m', 'gunicorn', '--help'],
                          capture_output=True, text=True)
    return (('--no-control-socket',) if '--no-control-socket' in proc.stdout
            else ())


class GlanceServer(object):
    """glance-api under gunicorn, bound to 127.0.0.1:`port`.

    ``hashing_algorithm``: Glance's option of that name (its default,
    sha512, if not given): what it reports as ``os_hash_algo``.
    """

    def __init__(self, workdir, port=None, debug=False,
                 hashing_algorithm='sha512'):
        self.workdir = os.path.abspath(workdir)
        self.port = port or free_port()
        self.debug = debug
        self.hashing_algorithm = hashing_algorithm
        self.log_path = os.path.join(self.workdir, 'glance-api.log')
        self._etc = os.path.join(self.workdir, 'etc')
        self._conf = os.path.join(self._etc, 'glance-api.conf')
        self._proc = None

    @property
    def url(self):
        return 'http://127.0.0.1:%d' % self.port

    @property
    def pid(self):
        """glance-api's pid, which is also its process group's id."""
        return self._proc.pid if self._proc is not None else None

    def is_running(self):
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def _configure(self):
        for d in ('etc', 'cache', 'images', 'staging', 'tasks', 'locks'):
            os.makedirs(os.path.join(self.workdir, d), exist_ok=True)
        shutil.copy(_find_paste_ini(), os.path.join(self._etc, PASTE_INI))
        with open(self._conf, 'w') as f:
            f.write(CONF_TEMPLATE.format(workdir=self.workdir, url=self.url,
                                         paste=PASTE_INI, debug=self.debug,
                                         hashing_algorithm=(
                                             self.hashing_algorithm)))
        marker = os.path.join(self.workdir, '.db_synced')
        if not os.path.exists(marker):
            cmd = [sys.executable, '-m', 'glance.cmd.manage',
                   '--config-file', self._conf, 'db_sync']
            res = subprocess.run(cmd, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
            if res.returncode:
                raise RuntimeError('glance-manage db_sync failed:\n%s'
                                   % res.stdout[-4000:])
            open(marker, 'w').close()

    def start(self):
        """Start glance-api and wait until it answers; no-op if running."""
        if self.is_running():
            return
        t0 = time.monotonic()
        self._configure()
        cmd = [sys.executable, '-m', 'gunicorn',
               '--workers', '1', '--threads', '1', '--timeout', '3600',
               '--bind', '127.0.0.1:%d' % self.port]
        cmd += list(_no_control_socket()) + [
               # By package: this directory on sys.path would make this
               # module shadow Glance itself.
               '--pythonpath', REPO_ROOT,
               'tests.testbed.glance_wsgi:application']
        env = dict(os.environ, OS_GLANCE_CONFIG_DIR=self._etc)
        with open(self.log_path, 'ab') as log:
            self._proc = subprocess.Popen(
                cmd, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_until_answering()
        except Exception:
            self.stop()
            raise
        LOG.info('glance-api up at %s in %.1f s (pid %d)',
                 self.url, time.monotonic() - t0, self._proc.pid)

    def _wait_until_answering(self):
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                self._fail('glance-api exited with %s' % self._proc.returncode)
            try:
                urllib.request.urlopen(self.url + '/versions', timeout=2)
                return
            except urllib.error.HTTPError:
                return  # any HTTP answer means the app is serving
            except OSError:
                pass
            if time.monotonic() > deadline:
                self._fail('glance-api did not answer within %d s'
                           % START_TIMEOUT)
            time.sleep(0.2)

    def _fail(self, msg):
        raise RuntimeError('%s at %s; tail of %s:\n%s'
                           % (msg, self.url, self.log_path, self.log_tail()))

    def log_tail(self, lines=40):
        try:
            with open(self.log_path, errors='replace') as f:
                return ''.join(f.readlines()[-lines:])
        except OSError:
            return ''

    def kill(self):
        """kill -9 glance-api (gunicorn's master and worker), as a crash."""
        if self._proc is not None:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop()

    def stop(self):
        """Stop the whole process group: SIGTERM, then SIGKILL if needed."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(STOP_TIMEOUT)
                break
            except subprocess.TimeoutExpired:
                LOG.warning('glance-api (pid %d) ignored %s',
                            proc.pid, sig.name)
        proc.wait()
        try:  # a worker that outlived its master would keep the port
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        LOG.info('glance-api at %s stopped', self.url)
