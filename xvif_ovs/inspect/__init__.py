"""Read-only views of the host for the operator CLI."""
