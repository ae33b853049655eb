"""The `xvif-ovs` command line."""
