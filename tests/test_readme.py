"""README's composition example is code users copy: it must run as printed."""

import re
from pathlib import Path

import numpy as np

from stages import mulaw
from stages.rtp import RtpPacket

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    (example,) = [block for block in blocks if "class LoudnessMeter" in block]
    return example


async def test_composition_example_runs_as_printed():
    namespace: dict = {}
    exec(compile(readme_example(), str(README), "exec"), namespace)
    tone = (8000 * np.sin(np.arange(160 * 10) * 0.1)).astype(np.int16)
    payloads = [mulaw.encode(tone[i : i + 160]) for i in range(0, len(tone), 160)]
    packets = [
        RtpPacket(0, sequence, sequence * 160, 1234, payload).serialize()
        for sequence, payload in enumerate(payloads)
    ]
    levels = await namespace["meter"](packets)
    assert len(levels) == 10
    expected = float(np.sqrt(np.mean(mulaw.decode(payloads[3]).astype(np.float64) ** 2)))
    assert abs(levels[3] - expected) < 1e-6
