"""nova-snapdriver: a nova libvirt driver with a faster, safer snapshot()."""
