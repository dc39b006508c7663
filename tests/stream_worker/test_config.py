"""The one configuration: defaults, file, environment, flags (in that order); one
environment scheme; strict types; every value range-checked with its name; secrets only
from the environment; loading imports no model runtime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engines.config import DeviceRequest
from engines.errors import ConfigError
from stream_worker.cli.main import main
from stream_worker.config import RETIRED_ENV, Pacing, as_dict, load_config


def test_defaults_file_environment_and_flags_in_that_order(tmp_path: Path) -> None:
    file = tmp_path / "worker.yaml"
    file.write_text("pipeline:\n  detect_every_frames: 2\n  tracker:\n    min_hits: 4\nstream:\n  pacing: all\n"
                    "runtime:\n  workers: 3\n")
    config = load_config(
        file,
        flags={"pipeline": {"detect_every_frames": 3}, "runtime": {"device": "cpu"}},
        env={"FACESTREAM__STREAM__PACING": "realtime", "FACESTREAM__RUNTIME__DEVICE": "cuda",
             "FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES": "7", "OTHER": "x"},
    )
    assert config.pipeline.detect_every_frames == 3  # flag over environment over file
    assert config.runtime.device is DeviceRequest.CPU  # flag over environment
    assert config.pipeline.tracker.min_hits == 4  # file over default
    assert config.stream.pacing is Pacing.REALTIME  # environment over file
    assert config.runtime.workers == 3
    assert config.detector.min_face_size_px == 20  # untouched default


@pytest.mark.parametrize(
    "env, message",
    [
        ({"FACESTREAM__PIPELINE__DETECT_EVERY": "2"},
         r"pipeline\.detect_every: unknown setting \(valid: analyze_every_frames, detect_every_frames"),
        ({"FACESTREAM__STREAM__PACING": "fast"}, r"stream\.pacing: Input should be 'auto', 'all' or 'realtime'"),
        ({"FACESTREAM__DETECTOR__MIN_FACE_SIZE_PX": "big"}, r"detector\.min_face_size_px: Input should be a valid"),
        ({"FACESTREAM__DETECTOR__MIN_FACE_SIZE_PX": "5"}, r"detector\.min_face_size_px: .*greater than or equal to 12"),
        ({"FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES": "true"},  # a bool is not an integer
         r"pipeline\.detect_every_frames: Input should be a valid integer, got True \(from environment "
         r"FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES\)"),
        ({"FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES": "2.0"}, r"pipeline\.detect_every_frames: .*valid integer"),
        ({"FACESTREAM__GALLERY__THRESHOLD": "-1.5"}, r"gallery\.threshold: .*greater than or equal to -1"),
        ({"FACESTREAM__GALLERY__THRESHOLD": "1.01"}, r"gallery\.threshold: .*less than or equal to 1"),
        ({"FACESTREAM__GALLERY__THRESHOLD": ".nan"}, r"gallery\.threshold: Input should be a finite number"),
        ({"FACESTREAM__STREAM__OPEN_TIMEOUT_MS": "-5"}, r"stream\.open_timeout_ms: .*greater than or equal to 1"),
        ({"FACESTREAM__KAFKA__REQUEST_TIMEOUT_MS": "-1"}, r"kafka\.request_timeout_ms"),
        ({"FACESTREAM__API__MAX_UPLOAD_MB": "-1"}, r"api\.max_upload_mb: Input should be greater than 0"),
        ({"FACESTREAM__PIPELINE": "3"}, r"pipeline: Input should be an object"),
        ({"FACESTREAM__STREAM__QUEUE_FRAMES": "0"}, r"stream\.queue_frames"),
        ({"FACESTREAM__KAFKA__HEARTBEAT_INTERVAL_MS": "5000"},
         r"kafka: heartbeat_interval_ms must be at most a third of session_timeout_ms \(from environment"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(env=env)


def test_the_file_is_checked_as_strictly(tmp_path: Path) -> None:
    file = tmp_path / "worker.yaml"
    file.write_text("pipeline:\n  detect_every_frames: true\n")
    with pytest.raises(ConfigError, match=rf"pipeline\.detect_every_frames: .*valid integer, got True \(from file "
                                          rf"{file}\)"):
        load_config(file, env={})
    file.write_text("pipeline: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(file, env={})
    with pytest.raises(ConfigError, match="cannot read it"):
        load_config(tmp_path / "missing.yaml", env={})


@pytest.mark.parametrize("name", sorted(RETIRED_ENV))
def test_one_environment_scheme_the_old_names_are_refused_with_their_replacement(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is no longer read: set {RETIRED_ENV[name]} instead"):
        load_config(env={name: "x"})


def test_switches_from_the_environment() -> None:
    assert load_config(env={"FACESTREAM__RUNTIME__FORCE_CPU": "1"}).runtime.force_cpu is True
    assert load_config(env={"FACESTREAM__MODELS__AUTO_FETCH": "off"}).models.auto_fetch is False
    with pytest.raises(ConfigError, match=r"models\.auto_fetch: Input should be a valid boolean, got 2"):
        load_config(env={"FACESTREAM__MODELS__AUTO_FETCH": "2"})


def test_text_settings_keep_their_text_and_empty_means_none_or_empty() -> None:
    config = load_config(env={"FACESTREAM__KAFKA__BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
                              "FACESTREAM__KAFKA__GALLERY_TOPIC": "", "FACESTREAM__GALLERY__PATH": "",
                              "FACESTREAM__KAFKA__CLIENT_ID": "007", "FACESTREAM__KAFKA__SESSION_TIMEOUT_MS": "6000"})
    assert config.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert config.kafka.client_id == "007"  # not the integer 7
    assert config.kafka.gallery_topic == "" and config.gallery.path is None  # empty: off / none
    assert config.kafka.session_timeout_ms == 6000


def test_secrets_come_only_from_the_environment_and_are_never_printed(tmp_path: Path) -> None:
    from stream_worker.kafka.client import client_settings

    config = load_config(env={"FACESTREAM__KAFKA__SASL_MECHANISM": "PLAIN", "FACESTREAM__KAFKA__SASL_USERNAME": "fs",
                              "FACESTREAM__KAFKA__SASL_PASSWORD": "true", "FACESTREAM__API__TOKEN": "0123456789abcdefgh"})
    assert client_settings(config.kafka)["sasl_plain_password"] == "true"  # text, not a YAML bool
    assert config.api.token.get_secret_value() == "0123456789abcdefgh"
    printed = json.dumps(as_dict(config))
    assert "0123456789abcdefgh" not in printed and '"sasl_password": "**********"' in printed
    file = tmp_path / "worker.yaml"
    file.write_text("kafka:\n  sasl_password: hunter2\n")
    with pytest.raises(ConfigError, match=r"kafka\.sasl_password may only come from the environment "
                                          r"\(FACESTREAM__KAFKA__SASL_PASSWORD\)") as refused:
        load_config(file, env={})
    assert "hunter2" not in str(refused.value)


def test_loading_the_configuration_imports_no_model_runtime() -> None:
    code = (
        "import sys\n"
        "from stream_worker.config import load_config\n"
        "load_config(env={'FACESTREAM__PIPELINE__DETECT_EVERY_FRAMES': '2'})\n"
        "heavy = [m for m in ('cv2', 'faiss', 'onnxruntime', 'torch', 'dlib', 'av', 'kafka', 'fastapi',\n"
        "                     'stream_worker.pipeline.face_pipeline', 'gallery.gallery') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_flags_override_the_environment_and_bad_flags_exit_2(capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FACESTREAM__RUNTIME__DEVICE", "cuda")
    monkeypatch.setenv("FACESTREAM__METRICS__PORT", "9000")
    assert main(["run", "--source", "x.mp4", "--device", "cpu", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["runtime"]["device"] == "cpu" and printed["metrics"]["port"] == 9000
    assert main(["serve-api", "--db", "x.db", "--max-upload-mb", "-1", "--print-config"]) == 2
    assert "api.max_upload_mb: Input should be greater than 0, got -1.0 (from command line)" in capsys.readouterr().err
