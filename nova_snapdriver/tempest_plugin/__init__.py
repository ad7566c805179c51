"""nova-snapdriver's tempest plugin: createImage against a real cloud.

Loaded by tempest through the ``tempest.test_plugins`` entry point.  Only
tempest (``tempest.lib``, ``tempest.config`` and tempest's compute base
classes) is imported here, never nova or libvirt: the plugin runs from a
tempest environment, wherever that is, against the cloud's APIs.
"""
