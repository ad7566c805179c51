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
