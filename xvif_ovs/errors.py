"""One exception type per kind of bad input; each message says what to fix.

Operators see these messages verbatim (on the CLI, in hotplug-error, in logs), so a
message names the offending value and the way out, never just "invalid".
"""


class XvifError(Exception):
    """Base of every error xvif-ovs reports to an operator instead of a traceback."""


class VifSpecError(XvifError, ValueError):
    """An xl vif spec (or one of its keys, as found in XenStore) that cannot be used."""


class LabError(XvifError):
    """The lab cannot do what was asked (not up, name taken, missing package, ...)."""
