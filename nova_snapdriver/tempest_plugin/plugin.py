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

"""The TempestPlugin that tempest finds through the entry point.

setup.cfg names it under ``tempest.test_plugins`` as ``nova-snapdriver``.
"""

import os

from tempest import config
from tempest.test_discover import plugins

from nova_snapdriver.tempest_plugin import config as snapdriver_config


class SnapdriverTempestPlugin(plugins.TempestPlugin):

    def load_tests(self):
        """(directory of the tests, top-level directory of their package)."""
        plugin_dir = os.path.dirname(os.path.abspath(__file__))
        top_level = os.path.dirname(os.path.dirname(plugin_dir))
        return os.path.join(plugin_dir, 'tests'), top_level

    def register_opts(self, conf):
        config.register_opt_group(
            conf, snapdriver_config.snapdriver_feature_group,
            snapdriver_config.SnapdriverFeatureGroup)

    def get_opt_lists(self):
        return snapdriver_config.list_opts()
