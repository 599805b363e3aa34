"""
Public-domain tunes the sample song catalogue plays: synthesised, not shipped.

A fresh imserver has no media of its own, yet the KTV sample songs need a
``link`` a client can play and an ``lrc`` whose timings match it. Each tune
here is a list of lyric lines with their notes; :func:`wav` renders the
melody (8 kHz, 8-bit mono sine tones) and :func:`lrc` the lyrics with the
start time of each line, so the two agree by construction. Rendering takes a
fraction of a second: callers run it in a thread and keep the result.
"""

from __future__ import annotations

import io
import math
import wave

RATE = 8000
LEAD_IN = 1.0  # seconds of silence before the first note

# note names -> semitones from C
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _freq(note: str) -> float:
    """'C4' -> Hz (A4 = 440)."""
    name, octave = note[:-1], int(note[-1])
    midi = 12 * (octave + 1) + _SEMITONE[name[0]] + name.count("#")
    return 440.0 * 2 ** ((midi - 69) / 12)


def _line(text: str, notes: str) -> tuple[str, list[tuple[str, float]]]:
    """'C4 C4 G4:2' -> [('C4', 1), ('C4', 1), ('G4', 2)] (beats after the colon)."""
    out = []
    for token in notes.split():
        note, _, beats = token.partition(":")
        out.append((note, float(beats or 1)))
    return text, out


_TWINKLE_A = "C4 C4 G4 G4 A4 A4 G4:2"
_TWINKLE_B = "F4 F4 E4 E4 D4 D4 C4:2"
_TWINKLE_C = "G4 G4 F4 F4 E4 E4 D4:2"
_JOY_A = "E4 E4 F4 G4 G4 F4 E4 D4"

TUNES: dict[str, tuple[int, list]] = {  # name -> (beats per minute, lines)
    "twinkle": (100, [
        _line("Twinkle, twinkle, little star,", _TWINKLE_A),
        _line("How I wonder what you are!", _TWINKLE_B),
        _line("Up above the world so high,", _TWINKLE_C),
        _line("Like a diamond in the sky.", _TWINKLE_C),
        _line("Twinkle, twinkle, little star,", _TWINKLE_A),
        _line("How I wonder what you are!", _TWINKLE_B),
    ]),
    "joy": (120, [
        _line("Freude, schöner Götterfunken,", _JOY_A),
        _line("Tochter aus Elysium,", "C4 C4 D4 E4 E4:1.5 D4:0.5 D4:2"),
        _line("Wir betreten feuertrunken,", _JOY_A),
        _line("Himmlische, dein Heiligtum!", "C4 C4 D4 E4 D4:1.5 C4:0.5 C4:2"),
    ]),
    "jacques": (110, [
        _line("Frère Jacques, frère Jacques,", "C4 D4 E4 C4 C4 D4 E4 C4"),
        _line("Dormez-vous? Dormez-vous?", "E4 F4 G4:2 E4 F4 G4:2"),
        _line("Sonnez les matines, sonnez les matines,",
              "G4:0.5 A4:0.5 G4:0.5 F4:0.5 E4 C4 G4:0.5 A4:0.5 G4:0.5 F4:0.5 E4 C4"),
        _line("Ding, dang, dong. Ding, dang, dong.", "C4 G3 C4:2 C4 G3 C4:2"),
    ]),
}


def names() -> list[str]:
    return sorted(TUNES)


def _timeline(name: str):
    bpm, lines = TUNES[name]
    beat = 60.0 / bpm
    t = LEAD_IN
    for text, notes in lines:
        start = t
        timed = []
        for note, beats in notes:
            timed.append((t, note, beats * beat))
            t += beats * beat
        yield start, text, timed


def duration(name: str) -> int:
    """Whole seconds, rounded up (the catalogue's ``duration``)."""
    end = LEAD_IN
    for _, _, timed in _timeline(name):
        t, _, length = timed[-1]
        end = t + length
    return math.ceil(end)


def lrc(name: str) -> str:
    out = [f"[ti:{name}]", "[by:imserver sample]"]
    for start, text, _ in _timeline(name):
        minutes, seconds = divmod(start, 60)
        out.append(f"[{int(minutes):02d}:{seconds:05.2f}]{text}")
    return "\n".join(out) + "\n"


def wav(name: str) -> bytes:
    total = duration(name)
    samples = bytearray([128]) * (total * RATE)
    for _, _, timed in _timeline(name):
        for start, note, length in timed:
            f = _freq(note)
            first = int(start * RATE)
            n = int(length * RATE * 0.92)  # a short gap between notes
            fade = max(1, int(0.02 * RATE))
            for i in range(n):
                env = min(1.0, i / fade, (n - i) / fade)
                samples[first + i] = 128 + int(70 * env * math.sin(2 * math.pi * f * i / RATE))
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(1)
        w.setframerate(RATE)
        w.writeframes(bytes(samples))
    return buf.getvalue()
