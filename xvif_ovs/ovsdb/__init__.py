"""OVSDB, spoken natively through python-ovs: finding the server, and transactions."""
