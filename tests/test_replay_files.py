"""Bad replay files (recordings and traces) never crash the reader: one ``file:line: message``, no traceback."""

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipesim.cli import main as cli_main
from pipesim.live import load_replay
from pipesim.trace import Trace, TraceError

FILE_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

RECORDING = [
    '{"recording":"pipesim","version":1,"scenario":"x","seed":1}',
    '{"wall":0.0,"t":0.0,"message":{"type":"session_created","session_id":"a","timestamp":0.0,"seq":0}}',
    '{"wall":0.1,"t":0.5,"message":{"type":"session_ended","session_id":"a","timestamp":0.5,"seq":1,'
    '"reason":"stopped"}}',
]
TRACE = [
    '{"record":"header","scenario":"x","seed":1}',
    '{"record":"event","t":0.0,"session_id":"a","turn_id":0,"seq":0,"event":"session_created","status":"created",'
    '"state":"idle","stt":"idle","llm":"idle","tts":"idle","buffer_size":0,"audio_quality":0.0}',
    '{"record":"event","t":1.0,"session_id":"a","turn_id":0,"seq":-1,"event":"speech_ended","value":2.0}',
    '{"record":"turn","session_id":"a","turn_id":1,"outcome":"complete","stt_timeouts":0,"llm_timeouts":0,'
    '"tts_timeouts":0,"audio_bytes":10,"e2e_latency":1.2}',
    '{"record":"service","t":0.5,"service":"llm","busy":1,"queued":0,"capacity":4}',
]


def write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


def as_bytes(lines: list[str]) -> list[bytes]:
    return [(line + "\n").encode() for line in lines]


def test_the_good_files_load(tmp_path):
    recording = load_replay(write(tmp_path / "r.jsonl", as_bytes(RECORDING)))
    assert [m["type"] for _, m in recording] == ["session_created", "session_ended"]
    trace = load_replay(write(tmp_path / "t.jsonl", as_bytes(TRACE)))
    assert [m["type"] for _, m in trace] == ["session_created"]


BAD_LINES = {
    "huge_int": '{"wall":0.2,"t":' + "9" * 5000 + ',"message":{}}',
    "huge_int_inside": '{"wall":0.2,"t":1,"message":{"type":"error","seq":' + "1" * 5000 + "}}",
    "deep": '{"wall":0.2,"t":1,"message":' + "[" * 1000 + "]" * 1000 + "}",
    "deep_object": '{"t":1,"message":' + '{"a":' * 1000 + "1" + "}" * 1000 + "}",
    "list": "[1, 2, 3]",
    "string": '"hello"',
    "number": "3",
    "truncated": '{"wall":0.2,"t":1.0,"message":{"type":"session_cr',
    "nan_t": '{"wall":0.2,"t":NaN,"message":{"type":"session_created","session_id":"b","timestamp":1,"seq":0}}',
}


@pytest.mark.parametrize("kind", ["recording", "trace"])
@pytest.mark.parametrize("case", sorted(BAD_LINES))
def test_a_bad_line_is_named(tmp_path, kind, case):
    good = RECORDING if kind == "recording" else TRACE
    line = BAD_LINES[case]
    if kind == "trace":
        line = line.replace('{"wall":0.2,', '{"record":"event",').replace('{"t":1,', '{"record":"event","t":1,')
    path = write(tmp_path / "f.jsonl", as_bytes([*good, line]))
    with pytest.raises(TraceError) as info:
        load_replay(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{len(good) + 1}: ") and "\n" not in message and len(message) < 400, message


@pytest.mark.parametrize("kind", ["recording", "trace"])
@pytest.mark.parametrize("garbage", [b"\xff\xfe\x00bad", b"\x00\x01\x02\x03", b"\x89PNG\r\n\x1a\n"])
def test_bad_utf8_and_binary_garbage_are_named(tmp_path, kind, garbage):
    good = RECORDING if kind == "recording" else TRACE
    path = write(tmp_path / "f.jsonl", [*as_bytes(good[:2]), garbage + b"\n", *as_bytes(good[2:])])
    with pytest.raises(TraceError, match=rf"^{path}:3: "):
        load_replay(path)
    binary = write(tmp_path / "bin.jsonl", [garbage])
    with pytest.raises(TraceError, match=rf"^{binary}:1: "):
        load_replay(binary)


@pytest.mark.parametrize("changes", [{"t": "soon"}, {"seq": "x"}, {"buffer_size": 1.5}, {"state": 3},
                                     {"session_id": None}, {"t": float("inf")},
                                     {"event": "speech_started", "state": "dancing"},
                                     {"event": "speech_started", "stt": None},
                                     {"event": "speech_started", "buffer_size": -1},
                                     {"event": "speech_started", "audio_quality": 2.0}])
def test_a_trace_field_of_the_wrong_type_or_value_is_named(tmp_path, changes):
    obj = {**json.loads(TRACE[1]), **changes}
    obj = {k: v for k, v in obj.items() if v is not None or k == "session_id"}
    path = write(tmp_path / "t.jsonl", as_bytes([TRACE[0], json.dumps(obj), *TRACE[2:]]))
    with pytest.raises(TraceError, match=rf"^{path}:2: "):
        load_replay(path)


def test_the_cli_prints_one_line_for_a_huge_integer(tmp_path, capsys):
    path = write(tmp_path / "r.jsonl", as_bytes([*RECORDING, BAD_LINES["huge_int"]]))
    assert cli_main(["replay", str(path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"pipesim: error: {path}:4: ") and err.count("\n") == 1, err


def test_a_replay_too_large_for_the_memory_available_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    # A replay holds every message decoded (~1 KB each): 100,000 sessions' 10 million messages would not fit.
    import pipesim
    from pipesim.live import recording

    folder = tmp_path / "run"
    pipesim.simulate({"sessions": {"arrivals": {"kind": "at_once", "count": 3}}}, progress=False).save(folder)
    files = [write(tmp_path / "r.jsonl", as_bytes(RECORDING)), write(tmp_path / "t.jsonl", as_bytes(TRACE))]
    assert all(load_replay(path) for path in [folder, *files])
    monkeypatch.setattr(recording, "default_memory_limit", lambda: 100)
    for path, what in [(folder, r"its [0-9,]+ messages"), *((f, r"the messages of 0 MB of JSON") for f in files)]:
        with pytest.raises(TraceError, match=rf"^{path}: replaying it would hold {what} in memory, .* --until"):
            load_replay(path)
        assert cli_main(["replay", str(path), "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pipesim: error: {path}: replaying it") and err.count("\n") == 1, err


# Generated: any line, anywhere --------------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["record", "t", "wall", "message", "type", "seq", "session_id", "event", "state",
                         "timestamp", "buffer_size", "x"]), children, max_size=5),
    max_leaves=15)
malformed_line = (
    json_values.map(lambda v: json.dumps(v).encode())
    | st.binary(max_size=40)
    | st.sampled_from([line.encode() for line in BAD_LINES.values()])
    | st.sampled_from(RECORDING + TRACE).flatmap(lambda line: st.integers(0, len(line)).map(
        lambda cut: line[:cut].encode()))  # truncated
)


@given(kind=st.sampled_from(["recording", "trace"]), line=malformed_line, where=st.integers(0, 5))
@FILE_SETTINGS
def test_a_malformed_line_anywhere_is_a_trace_error_or_reads(tmp_path, kind, line, where):
    good = as_bytes(RECORDING if kind == "recording" else TRACE)
    lines = [*good[:where], line.replace(b"\n", b" ") + b"\n", *good[where:]]
    path = write(tmp_path / "g.jsonl", lines)
    try:
        items = load_replay(path)
    except TraceError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), exc
    else:
        assert all(isinstance(t, float) for t, _ in items)
    try:
        Trace.from_jsonl(path)
    except TraceError as exc:
        assert str(exc).startswith(str(path)) and "\n" not in str(exc), exc


# Generated: NaN or an infinity in any numeric field of a line ------------------------------------------------
def _numeric_fields(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every number in a decoded line (``("message", "timestamp")``)."""
    if isinstance(value, bool):
        return []
    if isinstance(value, int | float):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _numeric_fields(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _numeric_fields(v, (*path, i))]
    return []


def _numbers_of(lines: list[str]) -> list[tuple[int, tuple[Any, ...]]]:
    return [(i, path) for i, line in enumerate(lines) for path in _numeric_fields(json.loads(line))]


#: Every line of a recording is replayed; of a trace, the state transitions (seq >= 0: TRACE[1]). A trace's
#: other records (its header, model events, turns, services) are not sent, so a NaN there is not refused.
REPLAYED_NUMBERS = {"recording": _numbers_of(RECORDING),
                    "trace": [(1, p) for p in _numeric_fields(json.loads(TRACE[1]))]}


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _set(value[path[0]], path[1:], new)
    return copy


@given(kind=st.sampled_from(["recording", "trace"]), data=st.data(),
       bad=st.sampled_from([float("nan"), float("inf"), float("-inf")]))
@FILE_SETTINGS
def test_nan_or_infinity_in_any_numeric_field_is_named_with_its_line(tmp_path, kind, data, bad):
    """Python's JSON reader takes NaN and Infinity; a replay must not (the client got close 1011 and the
    server a traceback when it sent one): one line naming file:line and the field."""
    good = RECORDING if kind == "recording" else TRACE
    index, field = data.draw(st.sampled_from(REPLAYED_NUMBERS[kind]))
    lines = list(good)
    lines[index] = json.dumps(_set(json.loads(good[index]), field, bad))  # writes NaN, Infinity, -Infinity
    path = write(tmp_path / "nan.jsonl", as_bytes(lines))
    with pytest.raises(TraceError) as info:
        load_replay(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{index + 1}: ") and "\n" not in message, message
    assert str(field[-1]) in message, message
