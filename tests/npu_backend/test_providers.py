"""Execution-provider choice: preference order, CPU last, strict mode, unavailable providers named."""
from __future__ import annotations

import pytest

from edgeawq.errors import UserError
from edgeawq.npu_backend.providers import choose_providers, session_options

CPU_ONLY = ["AzureExecutionProvider", "CPUExecutionProvider"]
WITH_NPU = ["VitisAIExecutionProvider", "CPUExecutionProvider"]


def test_default_list_takes_the_npu_first_and_keeps_cpu_for_fallback():
    assert choose_providers(None, False, WITH_NPU) == ["VitisAIExecutionProvider", "CPUExecutionProvider"]


def test_default_list_falls_back_to_cpu_without_an_npu():
    assert choose_providers(None, False, CPU_ONLY) == ["CPUExecutionProvider"]


def test_short_and_full_names_in_user_order():
    got = choose_providers("cpu,VitisAIExecutionProvider", False, WITH_NPU)
    assert got == ["CPUExecutionProvider", "VitisAIExecutionProvider"]


def test_strict_mode_without_the_npu_is_an_error_listing_available_providers():
    with pytest.raises(UserError, match="VitisAIExecutionProvider is not available.*CPUExecutionProvider"):
        choose_providers(None, True, CPU_ONLY)


def test_strict_mode_drops_the_cpu_provider_and_disables_fallback():
    providers = choose_providers(None, True, WITH_NPU)
    assert providers == ["VitisAIExecutionProvider"]
    so = session_options(True, 2, providers)
    assert so.get_session_config_entry("session.disable_cpu_ep_fallback") == "1"


def test_explicit_cpu_is_allowed_in_strict_mode():
    assert choose_providers("CPU", True, CPU_ONLY) == ["CPUExecutionProvider"]
    so = session_options(True, 2, ["CPUExecutionProvider"])
    with pytest.raises(RuntimeError):       # the entry is not set at all
        so.get_session_config_entry("session.disable_cpu_ep_fallback")


def test_unavailable_provider_list_is_an_error():
    with pytest.raises(UserError, match="available: AzureExecutionProvider, CPUExecutionProvider"):
        choose_providers("QNN,OpenVINO", False, CPU_ONLY)
