"""The host model: vifs, bridges and their VLANs, parsed and validated."""
