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

"""The smallest end-to-end proof: our driver, loaded by name, snapshots a
running instance into Glance, and the image holds the instance's disk."""

import os

import libvirt

from tests.testbed import checks
from tests.testbed import glance as test_glance
from tests.testbed import nova_env


def test_driver_loads_by_name_as_nova_compute_loads_it(driver):
    import nova.virt.snapdriver
    from nova_snapdriver import driver as our_driver

    assert isinstance(driver, our_driver.SnapLibvirtDriver)
    assert nova_env.CONF.compute_driver == nova_env.DRIVER_NAME
    # The re-export comes from the installed package, next to nova itself.
    assert 'site-packages' in nova.virt.snapdriver.__file__


def test_snapshot_of_running_instance_is_active_and_equal(
        driver, context, instance, make_image, glance, task_states,
        snapshots_dir, workdir):
    image = make_image(instance)

    driver.snapshot(context, instance.obj, image['id'], task_states)

    client = test_glance.client(glance.url)
    stored = client.images.get(image['id'])
    assert stored.status == 'active'
    assert stored.disk_format == 'qcow2'
    local = checks.download(client, image['id'],
                            os.path.join(workdir, 'smoke.img'))
    info = checks.image_info(local, 'qcow2')
    assert 'backing-filename' not in info
    assert checks.same_content(local, instance.disk_path)
    assert instance.state() == libvirt.VIR_DOMAIN_RUNNING
    assert instance.is_persistent()
    assert checks.leftovers(snapshots_dir) == []
    os.unlink(local)
