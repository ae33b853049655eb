"""XenStore: the wire protocol, a server for hosts without Xen, and clients."""
