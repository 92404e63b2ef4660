"""``compile_cfg`` options of the ``nash_e`` backend (torch-free: validated at start-up)."""

from __future__ import annotations

from typing import Literal

import attrs

from fcos_core.schema import arg

InputSource = Literal["pyramid", "ddr"]
OptLevel = Literal["O0", "O1", "O2", "O3"]


@attrs.frozen(kw_only=True)
class NashECompileOptions:
    """Compile a quantized deploy model into one fcos NASH-E program file (.hbm path)."""

    name: str = arg("model", help="model name stored in the artifact and shown in the report")
    out_dir: str = arg(help="folder for the report files (layer_details JSON and HTML)")
    hbm: str = arg(help="path of the compiled artifact (fcos's own format, not Horizon's)")
    layer_details: bool = arg(False, help="write per-layer JSON and HTML performance reports")
    input_source: list[InputSource] = arg(
        ["ddr"],
        help="per model input: 'pyramid' (camera YUV planes, NV12 or YUV444 uint8) "
        "or 'ddr' (the model's float input tensor, quantized by the runtime)",
    )
    input_color: Literal["yuv", "rgb"] = arg(
        "yuv",
        help="colour space the model was trained on (ToTensor to_yuv); `fcos infer` "
        "converts images to it. Pyramid inputs are always YUV",
    )
    opt: OptLevel = arg(
        "O3",
        help="optimisation level: O0 none, O1 requant/ReLU folding, "
        "O2 + conv+add fusion, O3 + scheduling and buffer reuse",
    )
