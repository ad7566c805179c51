# nova imports compute drivers only as nova.virt.<compute_driver>; this
# re-export lets nova.conf say: compute_driver = snapdriver.SnapLibvirtDriver
from nova_snapdriver.driver import SnapLibvirtDriver  # noqa: F401
