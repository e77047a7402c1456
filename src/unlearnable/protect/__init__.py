"""Protect a folder of one's own images with MI-UE, and verify the protection.

    from unlearnable.protect import protect_folder, verify_folder
    r = protect_folder("photos", "photos-protected", strength="mid", single_class=True)
    print(r.summary())
    report = verify_folder("photos", "photos-protected", out="verify.json")
    print(report["verdict"])

See docs/protect.md for the method (working-resolution surrogate, full-resolution
application), the input rules, resume and the verification protocol.
"""

from .engine import STRENGTHS, ProtectConfig, make_config
from .folder import ProtectResult, protect_folder
from .verify import format_report, verify_folder

__all__ = ["STRENGTHS", "ProtectConfig", "ProtectResult", "format_report", "make_config", "protect_folder",
           "verify_folder"]
