"""The OpenFlow controller: an os-ken shim around the pure pipeline."""
