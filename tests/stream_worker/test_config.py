"""Worker configuration: defaults, YAML, environment; validated once."""

from __future__ import annotations

from pathlib import Path

import pytest

from engines.config import DeviceRequest
from engines.errors import ConfigError
from stream_worker.config import Pacing, as_dict, load_config


def test_defaults_file_overrides_and_environment_in_that_order(tmp_path: Path) -> None:
    file = tmp_path / "worker.yaml"
    file.write_text("pipeline:\n  detect_every_frames: 2\n  tracker:\n    min_hits: 4\nstream:\n  pacing: all\n")
    config = load_config(
        file,
        overrides={"pipeline": {"detect_every_frames": 3}},
        env={"FACESTREAM__STREAM__PACING": "realtime", "FACESTREAM__RUNTIME__DEVICE": "cpu", "OTHER": "x"},
    )
    assert config.pipeline.detect_every_frames == 3  # flag over file
    assert config.pipeline.tracker.min_hits == 4  # file over default
    assert config.stream.pacing is Pacing.REALTIME  # environment over file
    assert config.runtime.device is DeviceRequest.CPU
    assert config.detector.min_face_size_px == 20  # untouched default


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"pipeline": {"detect_every": 2}}, r"unknown key\(s\) \['detect_every'\]; valid: \['analyze_every_frames'"),
        ({"stream": {"pacing": "fast"}}, "'fast' is not one of"),
        ({"detector": {"min_face_size_px": "big"}}, "expected int"),
        ({"detector": {"min_face_size_px": 5}}, "min_face_size_px must be an integer >= 12"),
        ({"pipeline": 3}, "expected a mapping"),
        ({"stream": {"queue_frames": 0}}, "queue_frames"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides, env={})


def test_bad_file(tmp_path: Path) -> None:
    file = tmp_path / "bad.yaml"
    file.write_text("pipeline: [1, 2\n")
    with pytest.raises(ConfigError, match="config file"):
        load_config(file, env={})


def test_effective_configuration_is_plain_data() -> None:
    data = as_dict(load_config(env={}))
    assert data["stream"]["pacing"] == "auto" and data["detector"]["thresholds"] == [0.6, 0.7, 0.7]


def test_kafka_settings_from_the_environment_and_empty_values() -> None:
    config = load_config(env={"FACESTREAM__KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
                              "FACESTREAM__KAFKA__GALLERY_TOPIC": "", "FACESTREAM__GALLERY__PATH": "",
                              "FACESTREAM__KAFKA__SESSION_TIMEOUT_MS": "6000"})
    assert config.kafka.common()["bootstrap_servers"] == ["k1:9092", "k2:9092"]
    assert config.kafka.gallery_topic == "" and config.gallery.path is None  # empty: off / none
    assert config.kafka.session_timeout_ms == 6000
    with pytest.raises(ConfigError, match="heartbeat_interval_ms must be at most a third"):
        load_config(env={"FACESTREAM__KAFKA__HEARTBEAT_INTERVAL_MS": "5000"})


def test_kafka_password_comes_only_from_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM_KAFKA_PASSWORD", "s3cret-pass")
    config = load_config(env={"FACESTREAM__KAFKA__SASL_MECHANISM": "PLAIN", "FACESTREAM__KAFKA__SASL_USERNAME": "fs"})
    assert config.kafka.common()["sasl_plain_password"] == "s3cret-pass"
    assert "s3cret-pass" not in str(as_dict(config))
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(env={"FACESTREAM__KAFKA__SASL_PASSWORD": "x"})
