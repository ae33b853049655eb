"""Stateful firewall rules per guest and per network (flows/PIPELINE.md, "Firewall")."""
