"""Patient-level differential privacy for local training: DP-SGD (``dpsgd``), its accountant (``accountant``) and the
run-configuration record that carries the privacy setting (``config``).

The unit of privacy is a patient: batches are Poisson samples of patients, and each sampled patient's contribution
(the gradient of the summed loss over all of that patient's encounters) is clipped to L2 norm C before Gaussian noise
of standard deviation z*C is added. The accountant (RDP, ``dp-accounting``) therefore bounds ε per patient.
"""

from medheaven.privacy.accountant import PrivacyLedger, calibrate_noise, epsilon_for
from medheaven.privacy.config import DpConfig

__all__ = ["DpConfig", "PrivacyLedger", "calibrate_noise", "epsilon_for"]
