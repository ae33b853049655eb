"""The lab: a Xen host simulated from real parts (ovs-vswitchd, a XenStore server on
the real wire protocol, guests as network namespaces) for tests, demos and users
without Xen."""
