"""USQNet model family."""

from usiqa_ros.core.model.usqnet import (
    PRESETS,
    USQNet,
    USQNetConfig,
    build_model,
    expected_score,
    usqnet_config,
    usqnet_lite_config,
)

__all__ = [
    "PRESETS",
    "USQNet",
    "USQNetConfig",
    "build_model",
    "expected_score",
    "usqnet_config",
    "usqnet_lite_config",
]
