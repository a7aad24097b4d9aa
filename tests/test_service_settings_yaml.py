"""The service's YAML settings file (pydantic-settings' YamlConfigSettingsSource): lowest priority,
and a named file that is missing, malformed or not a mapping is an error."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.settings import ServiceSettings


def test_yaml_is_read_and_env_and_init_override_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("tasks: [a-task]\nchannel: staging\npoll_interval_s: 3\nwarmup_size: 96\n")
    monkeypatch.setenv("POCKETGAN_SERVICE_CONFIG", str(cfg))
    monkeypatch.setenv("POCKETGAN_SERVICE_POLL_INTERVAL_S", "2")
    s = ServiceSettings(warmup_size=32)
    assert (s.tasks, s.channel, s.poll_interval_s, s.warmup_size) == (["a-task"], "staging", 2.0, 32)
    cfg.write_text("")  # an empty file: defaults
    assert ServiceSettings().channel == "production"


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "tasks: [unclosed\n"])
def test_yaml_that_is_not_a_mapping_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    cfg = tmp_path / "svc.yaml"
    cfg.write_text(text)
    monkeypatch.setenv("POCKETGAN_SERVICE_CONFIG", str(cfg))
    with pytest.raises(ValueError, match="must be a YAML mapping"):
        ServiceSettings()


def test_named_yaml_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POCKETGAN_SERVICE_CONFIG", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="no such file"):
        ServiceSettings()


def test_yaml_values_are_validated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "svc.yaml"
    cfg.write_text("tasks: ['../etc']\n")
    monkeypatch.setenv("POCKETGAN_SERVICE_CONFIG", str(cfg))
    with pytest.raises(ValueError, match="task"):
        ServiceSettings()


def test_serve_config_carries_the_access_log_and_tracing_settings() -> None:
    from service.service import serve_config

    default = serve_config(ServiceSettings())
    assert default["logging"] == {"access": {"enabled": True}}
    assert default["tracing"] == {"excluded_urls": ["/translate", "/resolve"]}  # no spans per request
    tuned = serve_config(ServiceSettings(access_log=False, tracing=True))
    assert tuned["logging"] == {"access": {"enabled": False}}
    assert "tracing" not in tuned  # BentoML's tracing configuration applies as it is
