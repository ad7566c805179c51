"""Reusable real-service test beds (libvirtd, Glance) for functional tests."""
