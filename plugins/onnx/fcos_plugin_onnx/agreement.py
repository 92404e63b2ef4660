"""Integer-code agreement between ONNX Runtime and the fcos quantized model.

The comparison lives in fcos core (:mod:`fcos_core.compile.agreement`), where the compile stage
holds every backend to the same rule; this module keeps the plugin's import path for it.
"""

from __future__ import annotations

from fcos_core.compile.agreement import (
    AGREEMENT_WITHIN_1,
    AgreementTally,
    code_agreement,
    disagreement,
    to_codes,
)

__all__ = ["AGREEMENT_WITHIN_1", "AgreementTally", "code_agreement", "disagreement", "to_codes"]
