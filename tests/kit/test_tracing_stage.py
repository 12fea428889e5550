"""tracing_stage: block-mode fits only (head-mode fits have no blocks to trace), refused before
anything is loaded."""

import pytest

from ecif.kit.problem import FitSettings
from ecif.kit.tracing_stage import TRACING_SETTINGS, block_swap_models


def test_head_mode_is_refused():
    with pytest.raises(ValueError, match="blocks"):
        block_swap_models("shapes", "no-data", "no-encoder", settings=FitSettings(mode="head"))
    assert TRACING_SETTINGS.mode == "blocks" and TRACING_SETTINGS.blocks == 1
