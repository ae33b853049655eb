"""Quirks of the libraries we build on, handled in one place."""

from __future__ import annotations

import warnings


def quiet_eventlet() -> None:
    """python-ovs and os-ken import eventlet if it is installed (it is: os-ken's optional
    hub), and eventlet warns on import that it is deprecated; we never use it."""
    warnings.filterwarnings("ignore", message=r"\s*Eventlet is deprecated")
