"""Play an MP4 recording whose writer stopped before it wrote its index (``moov``).

MP4 writers put the index at the end by default, so a recording cut short by a crash, a
power cut or a full disk holds its coded frames (the ``mdat`` box) but not the table that
says where each frame is, nor the decoder's parameter sets (SPS/PPS, for HEVC also VPS).
FFmpeg then opens nothing. What is still there, and how it is used:

- The parameter sets, when the encoder repeats them in the stream before key frames (many
  cameras do). Decoding starts at the first of them.
- Otherwise the parameters of a complete recording from the same camera (same resolution
  and encoder settings), given as the reference (setting ``stream.recovery_reference``).
- The coded frames, as NAL units each preceded by its length. They are found by walking
  the lengths (:func:`nal_units`). Audio interleaved with them is told from video by rules
  learnt from the camera's own units (:func:`learn_rules`: the reference's first packets,
  or the units after the first parameter sets): their header bytes, slice types, picture
  parameter set ids and sizes. On the shared clip (AAC audio after every video frame) and on
  H.264 and HEVC recordings with mono audio, every unit is found and no audio passes for
  video (tests/stream_worker/local/test_recovery.py).
- The units are decoded as an Annex B stream by FFmpeg's own parser and decoder, so a
  recovered frame is the frame the complete file gives. A picture the cut goes through is
  left out; timestamps come from the reference's frame rate or the one the parameter sets
  declare.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from engines.errors import FaceStreamError

log = logging.getLogger(__name__)

START_CODE = b"\x00\x00\x00\x01"
MAX_NAL_BYTES = 1 << 24
"""A longer unit is not a coded picture of any camera: the walk treats it as out of step."""

# Unit types found in camera streams. Others (H.264 data partitions, HEVC reserved types)
# are treated as out of step: that keeps audio from passing for video.
_H264_REFERENCED = {5, 7, 8}  # IDR slice, SPS, PPS: nal_ref_idc != 0
_H264_UNREFERENCED = {6, 9, 10, 11, 12}  # SEI, delimiter, end of sequence/stream, filler: nal_ref_idc == 0
_H264_ANY = {1}  # non-IDR slice
_HEVC_TYPES = set(range(0, 10)) | set(range(16, 22)) | set(range(32, 41))
_PARAMETER_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}
_PPS_TYPE = {"h264": 8, "hevc": 34}
_KEY_TYPES = {"h264": {1, 5, 7, 8}, "hevc": set(range(0, 10)) | set(range(16, 22)) | {32, 33, 34}}
"""Slices and parameter sets: learnt from a single occurrence (a key frame may be rare)."""


class UnrecoverableVideoError(FaceStreamError):
    """A recording cut before its index that cannot be played (no parameter sets)."""

    skippable = True


@dataclass(frozen=True)
class MediaData:
    """Where the coded data of a cut MP4 lies: ``[start, end)``."""

    start: int
    end: int


def mdat_without_index(path: Path) -> MediaData | None:
    """For a file that starts as MP4/MOV (an ``ftyp`` box) and holds no ``moov`` box: the
    span of its first ``mdat`` (to the end of the file when its size runs past it, or is 0
    because the writer never filled it in). None for anything else."""
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            position, media = 0, None
            while position + 8 <= size:
                f.seek(position)
                header = f.read(16)
                length, kind = struct.unpack(">I4s", header[:8])
                if position == 0 and kind != b"ftyp":
                    return None
                if kind == b"moov":
                    return None
                header_bytes = 8
                if length == 1 and len(header) == 16:
                    length, header_bytes = struct.unpack(">Q", header[8:16])[0], 16
                elif length == 0:
                    length = size - position
                if length < header_bytes:
                    break
                if kind == b"mdat" and media is None:
                    media = MediaData(position + header_bytes, min(position + length, size))
                position += length
            return media
    except OSError:
        return None


class _Bits:
    """An Exp-Golomb reader over the first bytes of a unit (emulation prevention removed)."""

    def __init__(self, data: bytes) -> None:
        self.data = data.replace(b"\x00\x00\x03", b"\x00\x00")
        self.position = 0

    def bit(self) -> int:
        byte = self.position >> 3
        if byte >= len(self.data):
            raise ValueError("past the end")
        value = (self.data[byte] >> (7 - (self.position & 7))) & 1
        self.position += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.bit():
            zeros += 1
            if zeros > 20:
                raise ValueError("not Exp-Golomb")
        value = 1
        for _ in range(zeros):
            value = value << 1 | self.bit()
        return value - 1


@dataclass(frozen=True)
class SliceHeader:
    """The first fields of a slice header."""

    first: bool
    """The slice starts its picture (H.264: first_mb_in_slice 0)."""
    slice_type: int | None
    """H.264's slice_type (HEVC: None; it comes after fields that need the PPS)."""
    pps_id: int


def slice_header(codec: str, unit: bytes) -> SliceHeader | None:
    """The slice header's first fields, or None if the unit is not a slice or does not parse."""
    kind = nal_type(codec, unit)
    try:
        if codec == "h264":
            if kind not in (1, 5):
                return None
            bits = _Bits(unit[1:])
            first_mb, slice_type = bits.ue(), bits.ue()
            if slice_type > 9 or (kind == 5 and slice_type % 5 not in (2, 4)):
                return None
            return SliceHeader(first_mb == 0, slice_type, bits.ue())
        if kind > 21:
            return None
        bits = _Bits(unit[2:])
        first = bool(bits.bit())
        if kind >= 16:
            bits.bit()  # no_output_of_prior_pics_flag
        return SliceHeader(first, None, bits.ue())
    except ValueError:
        return None


@dataclass(frozen=True)
class UnitRules:
    """What a NAL unit of this stream looks like: checked at every unit, so that audio
    interleaved with the video, or damage, is told from video (see :func:`nal_units`).

    Loose rules (the defaults) accept any well-formed header; :func:`learn_rules` narrows
    them to what the camera's encoder writes (its header bytes, slice types, whether a
    picture is one slice, the longest unit), which makes other data passing for video rare."""

    codec: str
    length_size: int = 4
    max_length: int = MAX_NAL_BYTES
    pps_ids: frozenset[int] | None = None
    """The picture parameter sets slices may refer to (None: any)."""
    headers: frozenset[bytes] | None = None
    """Unit header bytes the encoder writes (H.264: 1 byte, HEVC: 2)."""
    slice_types: frozenset[int] | None = None
    one_slice_per_picture: bool = False

    @property
    def header_bytes(self) -> int:
        return 1 if self.codec == "h264" else 2

    def header_ok(self, data: bytes | mmap.mmap, body: int) -> bool:
        """The unit's header alone."""
        if self.headers is not None:
            return bytes(data[body : body + self.header_bytes]) in self.headers
        if self.codec == "h264":
            header = data[body]
            if header & 0x80:
                return False
            kind, referenced = header & 0x1F, header & 0x60
            return kind in _H264_ANY or (kind in _H264_REFERENCED and referenced != 0) or (
                kind in _H264_UNREFERENCED and referenced == 0)
        first, second = data[body], data[body + 1]
        return not first & 0x80 and (first >> 1) & 0x3F in _HEVC_TYPES and (
            ((first & 1) << 5) | (second >> 3)) == 0 and second & 7 != 0

    def ok(self, data: bytes | mmap.mmap, body: int, length: int) -> bool:
        """A whole unit (or its start, where the data is cut): header, a length its type can
        have, and a slice header that parses and fits the stream."""
        if length > self.max_length or length < self.header_bytes + 1 or not self.header_ok(data, body):
            return False
        head = bytes(data[body : body + min(length, 24)])
        kind = nal_type(self.codec, head)
        if self.codec == "h264":
            if kind in (9, 10, 11):  # delimiter, end of sequence, end of stream
                return length <= 2
            if kind in (7, 8):
                return length <= 1024
            if kind not in (1, 5):
                return True
        else:
            if kind == 35:  # delimiter
                return length == 3
            if kind in (32, 33, 34):
                return length <= 4096
            if kind > 21:
                return True
        header = slice_header(self.codec, head)
        return header is not None and (self.pps_ids is None or header.pps_id in self.pps_ids) and (
            self.slice_types is None or header.slice_type in self.slice_types) and (
            header.first or not self.one_slice_per_picture)


def learn_rules(codec: str, units: list[bytes], *, length_size: int = 4,
                pps_ids: frozenset[int] | None = None) -> UnitRules:
    """Rules fitted to units known to be the camera's video: the header bytes of its slices
    and parameter sets, and of other units that make up at least 1% of them; the slice types
    that make up at least 1% of its slices; whether every picture is one slice; and four
    times the longest unit (at least 64 KiB) as the longest allowed."""
    rules = UnitRules(codec, length_size, pps_ids=pps_ids)
    units = [u for u in units if len(u) > rules.header_bytes and rules.header_ok(u, 0)]
    if len(units) < 10:
        return rules
    counts: dict[bytes, int] = {}
    for unit in units:
        counts[unit[: rules.header_bytes]] = counts.get(unit[: rules.header_bytes], 0) + 1
    key = _KEY_TYPES[codec]
    headers = frozenset(h for h, n in counts.items() if nal_type(codec, h) in key or n * 100 >= len(units))
    slices = [h for h in (slice_header(codec, u[:24]) for u in units) if h is not None]
    types: dict[int, int] = {}
    for header in slices:
        if header.slice_type is not None:
            types[header.slice_type] = types.get(header.slice_type, 0) + 1
    return UnitRules(
        codec, length_size, max(64 << 10, 4 * max(len(u) for u in units)), pps_ids, headers,
        frozenset(t for t, n in types.items() if n * 100 >= len(slices)) if types else None,
        bool(slices) and all(h.first for h in slices))


def nal_type(codec: str, unit: bytes | memoryview | mmap.mmap) -> int:
    return unit[0] & 0x1F if codec == "h264" else (unit[0] >> 1) & 0x3F


def pps_id(codec: str, unit: bytes) -> int | None:
    """The id of a picture parameter set unit."""
    try:
        return _Bits(unit[1:] if codec == "h264" else unit[2:]).ue()
    except ValueError:
        return None


@dataclass
class Walk:
    """Counts from :func:`nal_units`: bytes skipped as out of step (interleaved audio,
    damage) and whether the data ended inside a unit (the cut)."""

    skipped_bytes: int = 0
    cut_inside_unit: bool = False
    cut_unit: bytes = b""
    """The start of the unit the data ends inside."""


def nal_units(data: bytes | mmap.mmap, media: MediaData, rules: UnitRules,
              walk: Walk | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of each NAL unit in ``data[media.start:media.end]``, in file order.

    Each unit's length leads to the next. Where what follows is not a unit by ``rules`` (a
    chunk of audio, or damage), the walk searches forward for the next position where one
    starts. The rules (a length no coded picture of the stream's size exceeds, a header of a
    type cameras send, a slice header that refers to a known picture parameter set) keep
    other data from passing for video."""
    walk = walk if walk is not None else Walk()
    end, size = media.end, rules.length_size
    position = media.start
    while position + size < end:
        length = int.from_bytes(data[position : position + size], "big")
        body = position + size
        if body + length <= end and rules.ok(data, body, length):
            yield body, length
            position = body + length
            continue
        if body + length > end and length <= rules.max_length and rules.ok(data, body, min(length, end - body)):
            walk.cut_inside_unit, walk.cut_unit = True, bytes(data[body : min(end, body + 24)])
            return
        # Out of step: search for where the units resume. A length below 2**24 starts with a zero byte.
        candidate = position + 1
        while candidate + size < end:
            if size == 4:
                candidate = data.find(b"\x00", candidate, end)
                if candidate < 0:
                    candidate = end
                    break
            length = int.from_bytes(data[candidate : candidate + size], "big")
            if candidate + size + length <= end and rules.ok(data, candidate + size, length):
                break
            candidate += 1
        walk.skipped_bytes += min(candidate, end) - position
        position = candidate


LEARN_UNITS = 300
"""Units the rules are learnt from (a reference's first packets, or the units after the
first parameter sets in the stream)."""
TRIAL_PACKETS = 12
"""Packets that must mostly decode (3 in 4) before frames decoded with a reference's
parameters are given out."""
PARAMETER_SEARCH_BYTES = 64 << 20
"""How far into the data to look for parameter sets repeated in the stream."""


@dataclass(frozen=True)
class Parameters:
    """How to decode the units: the codec, the parameter sets to send first (borrowed from
    a reference, or none when the stream repeats them), and the rules units must meet."""

    rules: UnitRules
    parameter_sets: tuple[bytes, ...]
    first_unit: int
    """Offset of the first unit to decode (a length prefix)."""
    fps: float | None


def inband_parameters(data: bytes | mmap.mmap, media: MediaData) -> Parameters | None:
    """The first run of parameter sets the encoder repeated in the stream (SPS and PPS; for
    HEVC, VPS, SPS and PPS), found by walking each codec's units; None if there is none."""
    limit = MediaData(media.start, min(media.end, media.start + PARAMETER_SEARCH_BYTES))
    for codec in ("h264", "hevc"):
        loose = UnitRules(codec)
        needed = _PARAMETER_TYPES[codec]
        run: list[tuple[int, int]] = []
        for offset, length in nal_units(data, limit, loose):
            kind = nal_type(codec, data[offset : offset + 1])
            if kind in needed:
                run.append((offset, length))
                if {nal_type(codec, data[o : o + 1]) for o, _ in run} == needed:
                    ids = {pps_id(codec, bytes(data[o : o + n])) for o, n in run
                           if nal_type(codec, data[o : o + 1]) == _PPS_TYPE[codec]}
                    ids = frozenset(i for i in ids if i is not None)
                    after = MediaData(run[0][0] - 4, limit.end)
                    size = _coded_size(codec, data, nal_units(data, after, UnitRules(codec, pps_ids=ids)))
                    rules = UnitRules(codec, max_length=_max_length(size), pps_ids=ids)
                    units = zip(nal_units(data, after, rules), range(LEARN_UNITS))
                    sample = [bytes(data[o : o + n]) for (o, n), _ in units]
                    rules = learn_rules(codec, sample, pps_ids=ids) if len(sample) >= LEARN_UNITS // 10 else rules
                    return Parameters(rules, (), run[0][0] - 4, None)
            else:
                run = []
    return None


def _coded_size(codec: str, data: bytes | mmap.mmap, units: Iterator[tuple[int, int]]) -> tuple[int, int]:
    """The picture size of the first frame FFmpeg decodes from ``units`` (the parameter sets
    and what follows them); (0, 0) if none decodes within 64 units."""
    decoder = av.CodecContext.create(codec, "r")
    stream = b"".join(START_CODE + bytes(data[o : o + n]) for (o, n), _ in zip(units, range(64)))
    try:
        for packet in [*decoder.parse(stream), *decoder.parse(None), None]:
            for frame in decoder.decode(packet):
                return frame.width, frame.height
    except av.error.FFmpegError:
        pass
    return 0, 0


def _max_length(size: tuple[int, int]) -> int:
    """The longest unit a stream of this picture size is taken to have before its units are
    learnt: the size of its uncompressed luma plane (a coded picture is far smaller), at least
    256 KiB."""
    width, height = size
    return max(256 << 10, width * height)


def read_reference(path: Path, media_data: bytes | mmap.mmap, media: MediaData) -> Parameters:
    """The codec, NAL length size, parameter sets, picture size and frame rate of a complete
    recording; checked to fit the cut file's data."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnrecoverableVideoError(f"the recovery reference {path} has no video stream")
            stream = container.streams.video[0]
            codec = stream.codec_context.name
            extradata = bytes(stream.codec_context.extradata or b"")
            rate = stream.average_rate
            packets = [bytes(packet) for packet, _ in zip(
                (p for p in container.demux(stream) if p.size), range(LEARN_UNITS))]
    except FileNotFoundError:
        raise UnrecoverableVideoError(f"the recovery reference {path} does not exist") from None
    except (av.error.FFmpegError, OSError) as exc:
        raise UnrecoverableVideoError(f"the recovery reference {path} is not a complete video ({exc})") from None
    if codec not in ("h264", "hevc"):
        raise UnrecoverableVideoError(f"the recovery reference {path} is {codec}; only H.264 and HEVC are recovered")
    try:
        length_size, sets = (_avcc if codec == "h264" else _hvcc)(extradata)
    except (IndexError, struct.error):
        length_size, sets = 4, []
    if not sets:
        raise UnrecoverableVideoError(f"the recovery reference {path} holds no {codec} parameter sets in its index")
    ids = {pps_id(codec, unit) for unit in sets if nal_type(codec, unit) == _PPS_TYPE[codec]}
    units = []
    for packet in packets:
        position = 0
        while position + length_size <= len(packet):
            n = int.from_bytes(packet[position : position + length_size], "big")
            units.append(packet[position + length_size : position + length_size + n])
            position += length_size + n
    rules = learn_rules(codec, units, length_size=length_size, pps_ids=frozenset(i for i in ids if i is not None))
    first = next(nal_units(media_data, media, rules), None)
    if first is None:
        raise UnrecoverableVideoError(
            f"the data left in the cut file is not {codec} video as in the recovery reference {path}: "
            "use a recording from the same camera")
    return Parameters(rules, tuple(sets), first[0] - length_size, float(rate) if rate else None)


def _avcc(extradata: bytes) -> tuple[int, list[bytes]]:
    """AVCDecoderConfigurationRecord -> (NAL length size, [SPS..., PPS...])."""
    length_size = (extradata[4] & 3) + 1
    position, sets = 6, []
    for count in (extradata[5] & 0x1F, None):
        if count is None:
            count, position = extradata[position], position + 1
        for _ in range(count):
            (n,) = struct.unpack(">H", extradata[position : position + 2])
            sets.append(extradata[position + 2 : position + 2 + n])
            position += 2 + n
    return length_size, sets


def _hvcc(extradata: bytes) -> tuple[int, list[bytes]]:
    """HEVCDecoderConfigurationRecord -> (NAL length size, [VPS..., SPS..., PPS..., ...])."""
    length_size = (extradata[21] & 3) + 1
    arrays, position, sets = extradata[22], 23, []
    for _ in range(arrays):
        (count,) = struct.unpack(">H", extradata[position + 1 : position + 3])
        position += 3
        for _ in range(count):
            (n,) = struct.unpack(">H", extradata[position : position + 2])
            sets.append(extradata[position + 2 : position + 2 + n])
            position += 2 + n
    return length_size, sets


@dataclass
class RecoveredFrame:
    image: np.ndarray
    pts_ms: float | None


class RecoveredMp4:
    """Decodes the frames left in an MP4 cut before its index (``media``: its coded data),
    with the parameter sets repeated in the stream or borrowed from ``reference``."""

    def __init__(self, path: Path, media: MediaData, reference: Path | None = None) -> None:
        self.path, self.media, self.reference = path, media, reference
        self.corrupt_packets = 0
        self.walk = Walk()

    def frames(self, stop: threading.Event) -> Iterator[RecoveredFrame]:
        with self.path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            yield from self._frames(data, stop)

    def _parameters(self, data: mmap.mmap) -> Parameters:
        found = inband_parameters(data, self.media)
        if found is not None:
            return found
        if self.reference is not None:
            return read_reference(self.reference, data, self.media)
        raise UnrecoverableVideoError(
            f"{self.path} is an MP4 recording cut short before its index (moov) was written, and its encoder did not "
            "repeat the decoder's parameters in the stream, so they were lost with the index. To play it, give a "
            "complete recording from the same camera (same resolution and encoder settings) as the recovery "
            "reference (--recover-with FILE, setting stream.recovery_reference); and record to MPEG-TS, Matroska or "
            "fragmented MP4, which stay playable up to where they are cut")

    def _frames(self, data: mmap.mmap, stop: threading.Event) -> Iterator[RecoveredFrame]:
        parameters = self._parameters(data)
        rules = parameters.rules
        decoder = av.CodecContext.create(rules.codec, "r")
        decoder.thread_type = "AUTO"
        fps = parameters.fps
        index, tried = 0, 0
        # Borrowed parameters are on trial: the first frames are held back until enough packets
        # decode, so a reference from another camera gives an error, not pictures of noise.
        trial: list[RecoveredFrame] | None = [] if parameters.parameter_sets else None

        def judge(final: bool = False) -> Iterator[RecoveredFrame]:
            nonlocal trial
            if trial is None or (tried < TRIAL_PACKETS and not final):
                return
            if tried and self.corrupt_packets * 4 >= tried:
                raise UnrecoverableVideoError(
                    f"{self.path}: {self.corrupt_packets} of the first {tried} frames do not decode with the parameters "
                    f"of the recovery reference {self.reference}: it is not from the same camera and encoder settings")
            held, trial = trial, None
            yield from held

        def decode(packets: list[av.Packet] | list[None]) -> Iterator[RecoveredFrame]:
            nonlocal index, tried
            for packet in packets:
                tried += packet is not None
                try:
                    decoded = decoder.decode(packet)
                except av.error.FFmpegError as exc:
                    self.corrupt_packets += 1
                    log.warning("%s: skipped a corrupt frame (%s)", self.path, exc)
                    decoded = []
                for frame in decoded:
                    if frame.is_corrupt or getattr(frame, "decode_error_flags", 0):
                        self.corrupt_packets += 1  # (concealed by the decoder: not a picture to analyse)
                        log.warning("%s: skipped a frame that decoded with errors", self.path)
                        continue
                    # The reference's frame rate, else the one the stream's parameter sets declare.
                    rate = fps or (float(decoder.framerate) if decoder.framerate else None)
                    recovered = RecoveredFrame(frame.to_ndarray(format="bgr24"), index * 1000 / rate if rate else None)
                    index += 1
                    if trial is None:
                        yield recovered
                    else:
                        trial.append(recovered)
                yield from judge()

        pending = b"".join(START_CODE + unit for unit in parameters.parameter_sets)
        picture: list[bytes] = []  # the units of the latest picture, sent once the next one starts
        media = MediaData(parameters.first_unit, self.media.end)
        for offset, length in nal_units(data, media, rules, self.walk):
            if stop.is_set():
                return
            unit = data[offset : offset + length]
            header = slice_header(rules.codec, unit[:24])
            if header is None or header.first:
                pending += b"".join(picture)
                picture = []
            picture.append(START_CODE + unit)
            if len(pending) >= 65_536:
                yield from decode(decoder.parse(pending))
                pending = b""
        cut = slice_header(rules.codec, self.walk.cut_unit) if self.walk.cut_inside_unit else None
        if cut is not None and not cut.first:
            log.info("%s: the last picture is cut part-way; it is left out", self.path)
        else:
            pending += b"".join(picture)
        yield from decode(decoder.parse(pending) if pending else [])
        yield from decode(decoder.parse(None))
        yield from decode([None])  # (None flushes the decoder)
        yield from judge(final=True)
        if self.walk.skipped_bytes:
            log.info("%s: skipped %d bytes that are not video (audio, damage)", self.path, self.walk.skipped_bytes)
        if index == 0:
            raise UnrecoverableVideoError(
                f"{self.path}: no frame could be decoded from the data cut before its index"
                + (" with the parameters of the recovery reference: use a recording from the same camera"
                   if parameters.parameter_sets else ""))
