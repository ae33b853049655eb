"""StreamParser against python-ovs's own pure-Python parser: the same values, the same
split of a stream into messages, whatever the chunking."""

from __future__ import annotations

import json
import random

import ovs.json
import pytest

from xvif_ovs.ovsdb.stream_json import StreamParser

OVS_PARSER = ovs.json.Parser  # python-ovs's own (pure Python here), whatever a test installed

NASTY = ['a"b', "back\\slash", "\\", '\\"', "{[}]", '"', "", "ünï\u2603", "tab\tnl\n", "\\\\\\"]


def value(rng: random.Random, depth: int = 0) -> object:
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(NASTY + [str(rng.random())])
    if kind == 1:
        return rng.randrange(-(10**12), 10**12)
    if kind == 2:
        return rng.choice([True, False, None, 1.5])
    if kind == 3:
        return ["uuid", f"{rng.randrange(1 << 32):08x}-0000-4000-8000-000000000000"]
    if kind == 4:
        return [value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(NASTY + [f"k{i}"]): value(rng, depth + 1) for i in range(rng.randrange(4))}


def messages(stream: str, make, chunks: list[int]) -> list[object]:
    """Feed ``stream`` in the given chunk sizes as python-ovs's jsonrpc does."""
    out, parser, pending, pos = [], None, "", 0
    for n in chunks + [len(stream)]:
        pending += stream[pos : pos + n]
        pos += n
        while pending:
            if parser is None:
                parser = make()
            pending = pending[parser.feed(pending) :]
            if parser.is_done():
                out.append(parser.finish())
                parser = None
            elif not pending:
                break
    return out


@pytest.mark.parametrize("seed", range(40))
def test_random_streams_split_anywhere_decode_as_python_ovs_does(seed):
    rng = random.Random(seed)
    msgs = [{"id": i, "result": value(rng), "method": rng.choice(NASTY)} for i in range(rng.randrange(1, 6))]
    stream = "".join(json.dumps(m, ensure_ascii=rng.random() < 0.5) + rng.choice(["", "\n", "  "]) for m in msgs)
    chunks = [rng.randrange(1, 40) for _ in range(len(stream))]
    assert messages(stream, StreamParser, chunks) == msgs
    assert messages(stream, OVS_PARSER, chunks) == msgs


@pytest.mark.parametrize("cut", range(1, 12))
def test_a_string_cut_inside_an_escape_is_completed_by_the_next_feed(cut):
    stream = json.dumps({"s": 'x\\"}{', "t": ["\\\\", "]"]})
    assert messages(stream, StreamParser, [cut] * len(stream)) == [json.loads(stream)]


def test_not_json_is_reported_as_python_ovs_reports_it():
    p = StreamParser()
    p.feed("hello")
    assert p.is_done() and isinstance(p.finish(), str)  # jsonrpc treats a str result as a parse error
    p = StreamParser()
    assert p.feed('{"a": tru}  {') == len('{"a": tru}')
    assert p.is_done() and isinstance(p.finish(), str)
