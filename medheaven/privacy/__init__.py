"""Patient-level differential privacy for local training: DP-SGD (``dpsgd``), its accountant (``accountant``) and the
run-configuration record that carries the privacy setting (``config``).

The unit of privacy is a patient: batches are Poisson samples of patients, and each sampled patient's contribution
(the gradient of the summed loss over all of that patient's encounters) is clipped to L2 norm C before Gaussian noise
of standard deviation z*C is added. The accountant (RDP, ``dp-accounting``) therefore bounds ε per patient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from medheaven.privacy.config import DpConfig

if TYPE_CHECKING:
    from medheaven.privacy.accountant import PrivacyLedger, calibrate_noise, epsilon_for

__all__ = ["DpConfig", "PrivacyLedger", "calibrate_noise", "epsilon_for"]


def __getattr__(name: str) -> Any:
    # The accountant loads dp-accounting (about 1 s), which a run without DP never needs, and every run imports
    # this package (the run description carries its DpConfig): so it loads on first use only (PEP 562).
    if name in ("PrivacyLedger", "calibrate_noise", "epsilon_for"):
        from medheaven.privacy import accountant

        return getattr(accountant, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
