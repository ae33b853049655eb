"""xvif-ovs: the Open vSwitch / OpenFlow backend for Xen guest networking."""

__version__ = "0.1.0"
