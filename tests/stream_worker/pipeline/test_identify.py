"""Identity per track in the pipeline: a change of the vote leader past the switch ratio is a
``track_identified`` event that names the previous identity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from engines.config import DEFAULT_RECOGNIZER
from engines.image import read_image_file
from engines.multitask.recognizers import profile
from gallery.gallery import Match
from stream_worker.config import IdentifyConfig, PipelineConfig
from stream_worker.pipeline.face_pipeline import FacePipeline
from stream_worker.pipeline.frames import Frame


class ScriptedGallery:
    """Answers the pipeline's searches from a script (the pipeline, not the gallery, is what
    this test checks): of the searches with Lin's face (cosine with his photo at least the
    recognizer's 1:1 threshold; on the clip no other face scores above 0.15 against it), the
    first ``ann_searches`` name Ann and every later one Bob; any other face is unknown."""

    def __init__(self, lin: np.ndarray, ann_searches: int) -> None:
        self.lin = lin
        self.ann_searches = ann_searches
        self.searches = 0

    def search(self, queries: np.ndarray, k: int = 5) -> list[list[Match]]:
        out = []
        for query in queries:
            if float(query @ self.lin) < profile(DEFAULT_RECOGNIZER).verify_threshold:
                out.append([Match("zed", "Zed", 0.1, "unknown")])
                continue
            self.searches += 1
            who = "ann" if self.searches <= self.ann_searches else "bob"
            out.append([Match(who, who.title(), 0.97, "match")])
        return out


def test_a_track_switches_identity_when_the_votes_turn_and_says_from_whom(  # type: ignore[no-untyped-def]
    detector, multitask, hamilton_frames: list[Frame], faces_dir: Path,
) -> None:
    photo = read_image_file(faces_dir / "face_recognition/examples/lin-manuel-miranda.png")
    faces = detector.detect(photo)
    lin = multitask.analyze([photo], [faces[[int(np.argmax(faces.areas))]]])[0].embeddings[0]
    gallery = ScriptedGallery(lin, ann_searches=1)
    # a second search (the best shot improved) outweighs the first at a ratio of 1
    config = PipelineConfig(identify=IdentifyConfig(switch_ratio=1.0))
    pipeline = FacePipeline(detector, multitask, gallery, config)  # type: ignore[arg-type]
    events: list[dict[str, Any]] = []
    for frame in hamilton_frames[82:211]:  # Lin in close-up: one long track, searched as its best shot improves
        events += [e.to_json() for o in pipeline.process([frame]) for e in o.events if e.type == "track_identified"]
    assert gallery.searches >= 2, "the track was not searched often enough for its votes to turn"
    first, switch = events[0], events[1]
    assert first["track_id"] == switch["track_id"]
    assert first["identity"]["id"] == "ann" and first["previous_identity"] is None
    assert switch["identity"]["id"] == "bob" and switch["previous_identity"]["id"] == "ann"
    assert switch["frame_index"] > first["frame_index"]
    assert switch["event_id"] == f"hamilton:track:{switch['track_id']}:identified:{switch['frame_index']}"
