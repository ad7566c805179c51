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

"""What a user would look at after a snapshot, as functions for asserts."""

import json
import os
import subprocess

import libvirt_qemu


def download(glance_client, image_id, path):
    """Fetch an image's bytes from Glance into ``path``."""
    with open(path, 'wb') as f:
        for chunk in glance_client.images.data(image_id):
            f.write(chunk)
    return path


def reference_copy(inst, workdir):
    """A flat copy of the instance's disk as it is now, in ``workdir``."""
    path = os.path.join(workdir, inst.uuid + '.ref')
    subprocess.run(['qemu-img', 'convert', '-U', '-f', 'qcow2', '-O',
                    'qcow2', inst.disk_path, path], check=True)
    return path


def image_info(path, fmt=None):
    args = ['qemu-img', 'info', '-U', '--output=json']
    if fmt:
        args += ['-f', fmt]
    out = subprocess.run(args + [path], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out)


def same_content(a, b, a_fmt='qcow2', b_fmt='qcow2'):
    """True if the guest-visible content of the two images is equal."""
    proc = subprocess.run(['qemu-img', 'compare', '-U', '-f', a_fmt,
                           '-F', b_fmt, a, b], capture_output=True,
                          text=True)
    if proc.returncode not in (0, 1):
        raise AssertionError('qemu-img compare failed: %s' % proc.stderr)
    return proc.returncode == 0


def leftovers(directory):
    """Every file and directory left under ``directory``."""
    found = []
    for root, dirs, files in os.walk(directory):
        found += [os.path.join(root, n) for n in dirs + files]
    return sorted(found)


def block_jobs(domain, disk='vda'):
    """The block job on ``disk`` ({} if none; a shut-off domain has none).

    A libvirt that cannot answer (domain gone, connection dead) raises:
    "no job" must never be assumed.
    """
    if not domain.isActive():
        return {}
    return domain.blockJobInfo(disk, 0)


def throttle_block_jobs(domain, bytes_per_second=1024 * 1024):
    """Slow every block job of ``domain`` down, through QEMU's monitor.

    libvirt offers no bandwidth for a backup, and QEMU's backup job takes
    one (block-job-set-speed), so a test can make a backup outlast a short
    timeout on any disk, however fast the host.  Returns the jobs' ids.
    """
    def qmp(command, **arguments):
        reply = libvirt_qemu.qemuMonitorCommand(
            domain, json.dumps({'execute': command,
                                'arguments': arguments}), 0)
        answer = json.loads(reply)
        if 'return' not in answer:
            raise AssertionError('QEMU refused %s: %s' % (command, reply))
        return answer['return']
    jobs = [job['device'] for job in qmp('query-block-jobs')]
    for job in jobs:
        qmp('block-job-set-speed', device=job, speed=bytes_per_second)
    return jobs
