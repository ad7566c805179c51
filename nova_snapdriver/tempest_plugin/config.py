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

"""The options tempest reads for nova-snapdriver's tests.

They go in tempest.conf, in ``[snapdriver_feature_enabled]``, and say which
createImage cases the cloud's compute hosts are expected to handle.  A case
turned off here is skipped, not failed.
"""

from oslo_config import cfg

snapdriver_feature_group = cfg.OptGroup(
    name='snapdriver_feature_enabled',
    title='nova-snapdriver features to test',
    help='Which snapshot (createImage) cases of nova-snapdriver the compute '
         'hosts under test support.  tempest\'s own '
         '[compute-feature-enabled] snapshot and pause options also apply.')

SnapdriverFeatureGroup = [
    cfg.BoolOpt('live_snapshot',
                default=True,
                help='Test snapshots of ACTIVE (running) servers.  When '
                     '[validation] run_validation is on, one of these tests '
                     'also writes to the guest\'s disk over SSH during the '
                     'snapshot and reads the data back from a server booted '
                     'from the image.'),
    cfg.BoolOpt('paused_snapshot',
                default=True,
                help='Test snapshots of PAUSED servers.  Also needs '
                     '[compute-feature-enabled] pause.'),
    cfg.BoolOpt('stopped_snapshot',
                default=True,
                help='Test snapshots of SHUTOFF (stopped) servers.'),
    cfg.BoolOpt('boot_from_snapshot',
                default=True,
                help='Test booting a new server from a snapshot image.'),
]


def list_opts():
    """The groups and options, for tempest's sample config generator."""
    return [(snapdriver_feature_group.name, SnapdriverFeatureGroup)]
