"""The measured-data CSV: parsing, the atomic writer, and every refusal naming its line and
column. No ngspice."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from circuitsim.measured import DeviceTrace, MeasuredData, read_measured, write_measured
from netlists.config import preset
from netlists.errors import ConfigError

HW = preset("chip")
HEADER = "device,pulse,polarity,amplitude_v,width_s,gate_v,conductance_us"
FIRST = "d0,0,,,,,20"
SET = "d0,1,set,2.0,1e-7,2.0,21"


def _csv(tmp_path, *rows, header=HEADER):
    path = tmp_path / "data.csv"
    path.write_text("\n".join((header, *rows)) + "\n", encoding="utf-8")
    return path


def _refused(tmp_path, match, *rows, header=HEADER):
    path = _csv(tmp_path, *rows, header=header)
    with pytest.raises(ConfigError, match=match) as err:
        read_measured(path, HW)
    assert err.value.field == "--data"
    assert os.listdir(tmp_path) == ["data.csv"]
    return str(err.value)


def _same(a: MeasuredData, b: MeasuredData) -> None:
    assert [d.name for d in a.devices] == [d.name for d in b.devices]
    for da, db in zip(a.devices, b.devices):
        assert da.kind == db.kind
        for field in ("amplitude_v", "width_s", "gate_v", "conductance_us"):
            np.testing.assert_array_equal(getattr(da, field), getattr(db, field))


def test_reads_two_devices_with_extra_columns_reordered_and_a_bom(tmp_path):
    text = ("temp_c,conductance_us,gate_v,width_s,amplitude_v,polarity,pulse,device,note\n"
            "25,20.5,,,,,0,A,first\n"
            "25,40.0,,,,,0,B,\n"
            "25,22.25,2.0,1e-7,2.2,set,1,A,\n"
            "\n"
            "25,22.5,,,,read,2,A,\n"
            "25,30.0,3.0,5e-8,2.8,reset,1,B,\n"
            "25,21.0,3.0,5e-8,2.8,reset,3,A,x\n")
    path = tmp_path / "data.csv"
    path.write_bytes("\ufeff".encode() + text.encode())
    data = read_measured(path, HW)
    a, b = data.devices
    assert (a.name, b.name) == ("A", "B")
    assert a.kind == ("", "set", "read", "reset")
    assert b.kind == ("", "reset")
    np.testing.assert_array_equal(a.conductance_us, [20.5, 22.25, 22.5, 21.0])
    np.testing.assert_array_equal(b.conductance_us, [40.0, 30.0])
    np.testing.assert_array_equal(a.amplitude_v, [math.nan, 2.2, math.nan, 2.8])
    np.testing.assert_array_equal(a.width_s, [math.nan, 1e-7, math.nan, 5e-8])
    np.testing.assert_array_equal(a.gate_v, [math.nan, 2.0, math.nan, 3.0])
    np.testing.assert_array_equal(b.amplitude_v, [math.nan, 2.8])
    assert (a.pulses, b.pulses) == (2, 1)
    assert (data.pulses, data.reads) == (3, 6)
    assert data.path == str(path)
    assert os.listdir(tmp_path) == ["data.csv"]


def test_write_then_read_gives_the_same_data(tmp_path):
    source = read_measured(_csv(tmp_path, FIRST, SET, "d0,2,read,,,,21.5",
                                "d1,0,,,,,35", "d1,1,reset,2.75,5e-8,3.0,30.125"), HW)
    target = tmp_path / "out.csv"
    write_measured(target, source)
    back = read_measured(target, HW)
    _same(source, back)
    assert back.path == str(target)
    assert sorted(os.listdir(tmp_path)) == ["data.csv", "out.csv"]


def test_write_failing_midway_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old\n", encoding="utf-8")
    short = DeviceTrace(name="d0", kind=("", "set", "read"), amplitude_v=np.array([math.nan]),
                        width_s=np.array([math.nan]), gate_v=np.array([math.nan]),
                        conductance_us=np.array([20.0]))
    with pytest.raises(IndexError):
        write_measured(target, MeasuredData(devices=(short,), path=""))
    assert target.read_text(encoding="utf-8") == "old\n"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_missing_columns_are_listed(tmp_path):
    message = _refused(tmp_path, r"line 1: the header lacks the column\(s\) width_s, gate_v",
                       "d0,0,,,,20", header="device,pulse,polarity,amplitude_v,conductance_us")
    assert "column '" not in message


def test_empty_file(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty: it needs a header"):
        read_measured(path, HW)
    assert os.listdir(tmp_path) == ["data.csv"]


def test_header_only(tmp_path):
    _refused(tmp_path, "has a header but no rows")


def test_row_with_too_few_fields(tmp_path):
    _refused(tmp_path, "line 3: 3 fields, the header has 7", FIRST, "d0,1,set")


@pytest.mark.parametrize("label", ["", "  "])
def test_empty_device_label(tmp_path, label):
    _refused(tmp_path, r"line 2, column 'device': is empty", f"{label},0,,,,,20")


@pytest.mark.parametrize("rows, match", [
    ((FIRST, "d0,2,set,2.0,1e-7,2.0,21"), r"line 3, column 'pulse': .*pulse 2 where 1"),
    ((FIRST, SET, SET), r"line 4, column 'pulse': .*pulse 1 where 2"),
    (("d0,1,,,,,20",), r"line 2, column 'pulse': .*pulse 1 where 0"),
    ((FIRST, "d0,1.5,set,2.0,1e-7,2.0,21"), r"line 3, column 'pulse': '1.5' is not a whole"),
    ((FIRST, "d0,one,set,2.0,1e-7,2.0,21"), r"line 3, column 'pulse': 'one' is not a whole"),
], ids=["skipped", "repeated", "not-from-0", "fraction", "word"])
def test_pulses_must_count_0_1_2(tmp_path, rows, match):
    _refused(tmp_path, match, *rows)


@pytest.mark.parametrize("polarity", ["set", "reset", "read"])
def test_polarity_on_pulse_0(tmp_path, polarity):
    _refused(tmp_path, rf"line 2, column 'polarity': '{polarity}' on pulse 0",
             f"d0,0,{polarity},2.0,1e-7,2.0,20")


@pytest.mark.parametrize("polarity", ["write", "", "sett"])
def test_unknown_polarity(tmp_path, polarity):
    _refused(tmp_path, rf"line 3, column 'polarity': '{polarity}' must be one of set, reset",
             FIRST, f"d0,1,{polarity},2.0,1e-7,2.0,21")


@pytest.mark.parametrize("column", ["amplitude_v", "width_s", "gate_v", "conductance_us"])
@pytest.mark.parametrize("text, match", [
    ("nan", "must be a finite number"),
    ("NaN", "must be a finite number"),
    ("inf", "must be a finite number"),
    ("-inf", "must be a finite number"),
    ("abc", "is not a number"),
    ("", "is not a number"),
])
def test_values_must_be_finite_numbers(tmp_path, column, text, match):
    fields = dict(zip(HEADER.split(","), SET.split(",")))
    fields[column] = text
    _refused(tmp_path, rf"line 3, column '{column}': '{text}' {match}",
             FIRST, ",".join(fields.values()))


@pytest.mark.parametrize("g", ["3e-5", "4.2e-5", "0.02", "0.03"])  # S, then mS
def test_conductances_in_siemens_are_refused(tmp_path, g):
    _refused(tmp_path, r"line 2, column 'conductance_us': .*written in S or mS\?",
             f"d0,0,,,,,{g}", f"d0,1,set,2.0,1e-7,2.0,{g}")


# The chip's read window is 4.47-41.6 uS (README): in nS that is 4.5e3-4.2e4, as
# resistances 2.4e4-2.2e5 ohm.
@pytest.mark.parametrize("g", ["3e4", "2e5", "1e7"])
def test_conductances_in_nanosiemens_are_refused(tmp_path, g):
    _refused(tmp_path, r"line 2, column 'conductance_us': .*written in nS",
             f"d0,0,,,,,{g}", f"d0,1,set,2.0,1e-7,2.0,{g}")


def test_one_device_in_siemens_among_good_ones_is_refused(tmp_path):
    _refused(tmp_path, r"line 5, column 'conductance_us': .*written in S or mS\?",
             FIRST, SET, "d0,2,read,,,,21", "d1,0,,,,,3e-5")


@pytest.mark.parametrize("g", ["0", "-5", "-0.0"])
def test_conductance_must_be_positive(tmp_path, g):
    _refused(tmp_path, r"line 3, column 'conductance_us': .* uS must be positive",
             FIRST, f"d0,1,set,2.0,1e-7,2.0,{g}", "d0,2,read,,,,21")


@pytest.mark.parametrize("row, match", [
    ("d0,1,set,2400,1e-7,2.0,21", r"'amplitude_v': 2400.0 V is outside .*\(in mV\?"),
    ("d0,1,set,4.0,1e-7,2.0,21",
     r"'amplitude_v': 4.0 V is outside the model's validity \(0, 3.5\] V$"),
    ("d0,1,set,0,1e-7,2.0,21", r"'amplitude_v': 0.0 V is outside"),
    ("d0,1,set,-2.0,1e-7,2.0,21", r"'amplitude_v': -2.0 V is outside"),
    ("d0,1,reset,2.0,100,3.0,21", r"'width_s': 100.0 s must exceed two edges .*\(in ns or us\?"),
    ("d0,1,reset,2.0,0.01,3.0,21", r"'width_s': 0.01 s .* at most 1 ms \(in ns"),
    ("d0,1,reset,2.0,2e-9,3.0,21",
     r"'width_s': 2e-09 s must exceed two edges \(2 x drive.t_edge_s = 2e-09 s\)"),
    ("d0,1,reset,2.0,0,3.0,21", r"'width_s': 0.0 s must exceed two edges"),
])
def test_amplitude_and_width_ranges(tmp_path, row, match):
    _refused(tmp_path, rf"line 3, column {match}", FIRST, row)


@pytest.mark.parametrize("gate", ["-0.5", "5.5", "2400"])
def test_gate_range(tmp_path, gate):
    _refused(tmp_path, rf"line 3, column 'gate_v': {float(gate)!r} V is outside \[0, 5\] V",
             FIRST, f"d0,1,set,2.0,1e-7,{gate},21")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"absent.csv' does not exist"):
        read_measured(tmp_path / "absent.csv", HW)
    assert os.listdir(tmp_path) == []


def test_folder_given_as_the_file(tmp_path):
    (tmp_path / "runs").mkdir()
    with pytest.raises(ConfigError, match=r"runs' is a folder: name the CSV file"):
        read_measured(tmp_path / "runs", HW)
    assert os.listdir(tmp_path) == ["runs"]
    assert os.listdir(tmp_path / "runs") == []


def test_file_not_utf8(tmp_path):
    path = tmp_path / "data.csv"
    path.write_bytes(HEADER.encode() + b"\nd\xe9,0,,,,,20\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        read_measured(path, HW)
    assert os.listdir(tmp_path) == ["data.csv"]
