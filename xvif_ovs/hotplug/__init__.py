"""The vif hotplug hook: libxl runs it for every vif; it puts the vif on its OVS bridge."""
