"""The device- and ADC-model interfaces: the shipped implementations reproduce what the code
did before them (text, draws, window factor), and a model defined here plugs in."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from calibration.surfaces import get_surface
from calibration.surfaces.adc import ADCGrid, d_range
from circuitsim.device import draw_variation
from circuitsim.reference import DeviceModel
from circuitsim.tile import ideal_codes, quantize
from netlists import adc_model as adc_models
from netlists import device_model as device_models
from netlists.adc_model import ADCModelInterface, MultiCycleSamplingADC, adc_model
from netlists.array import render_cell_read_deck, render_tile_deck, render_tile_op_deck
from netlists.config import DeviceParams, HardwareConfig, preset
from netlists.device import BulkSwitchingModel
from netlists.device_model import DeviceModelInterface, device_model
from netlists.errors import ConfigError
from netlists.programming import Pulse, render_pulse_deck


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _configs() -> dict[str, HardwareConfig]:
    chip = preset("chip")
    other = chip.replace(adc={"comparator_offset_v": 0.003, "inl_lsb": 0.4},
                         device={"p_window_set": 3.0, "r_th_k_w": 0.0})
    return {"chip": chip, "other": other}


def _small(hw: HardwareConfig) -> tuple[HardwareConfig, np.ndarray, np.ndarray]:
    small = hw.replace(array={"rows": 4, "cols": 9})
    rng = np.random.default_rng(0)
    states = rng.uniform(small.device.n_min, small.device.n_max, (4, 9))
    return small, states, rng.integers(0, 256, 4)


#: sha256 (first 16 hex digits) of texts rendered before the interfaces existed (the
#: operating-point deck's since its .nodeset seeds are rounded to six digits; the tile and
#: operating-point decks' since the TIAs hang on supply sources, which changed only the TIA
#: subcircuit, its instance lines and the two supply sources; the decks with the device
#: library since its state equation gained the zero-bias relaxation, its one changed line)
_GOLDEN = {
    ("chip", "library"): "542d44749da2d89b", ("other", "library"): "2fbfeb72641d6c49",
    ("chip", "frontend"): "967b8dd6fdc7d1aa",
    ("chip", "quantizer"): "71e38ce8166e80fd", ("other", "quantizer"): "64c9c0cd44d2d727",
    ("chip", "tile"): "eeb30775d56865d8", ("other", "tile"): "cc9fad46c1710cc3",
    ("chip", "op"): "4c7d9524409c1867", ("chip", "cell"): "9a030c112e39b269",
    ("chip", "pulse"): "1e2c370b72144c59",
    ("chip", "adc_surface"): "daf26c41ff32d05b", ("other", "adc_surface"): "33e5c7609c9ccf8c",
}


def _rendered(key: str, hw: HardwareConfig) -> str:
    small, states, x = _small(hw)
    adc = adc_model(hw)
    if key == "library":
        return device_model(hw).library()
    if key == "frontend":
        return adc.frontend_subckt()
    if key == "quantizer":
        return adc.quantizer_subckt()
    if key == "tile":
        return render_tile_deck(small, states, x, adc_offset_v=[0.001, -0.002],
                                adc_inl_lsb=[0.1, 0.2])
    if key == "op":
        return render_tile_op_deck(small, states, np.full(4, 0.1))
    if key == "cell":
        return render_cell_read_deck(small, states.ravel())
    if key == "pulse":
        pulses = (Pulse("set", 2.2, 1e-7), Pulse("reset", 3.0, 1e-7))
        return render_pulse_deck(hw, pulses, n0=1.0, kc=np.array([1.0, 1.1]), kd=0.9,
                                 wd=1.01).text
    surface = get_surface("adc")
    return "".join(surface.netlists(small, surface.grid("tiny")))


@pytest.mark.parametrize("config, key", sorted(_GOLDEN))
def test_rendered_text_is_byte_identical_to_before(config, key):
    assert _sha(_rendered(key, _configs()[config])) == _GOLDEN[config, key]


def test_the_shipped_models_implement_the_interfaces():
    hw = preset("chip")
    assert isinstance(device_model(hw), BulkSwitchingModel)
    assert isinstance(device_model(hw), DeviceModelInterface)
    assert isinstance(adc_model(hw), MultiCycleSamplingADC)
    assert isinstance(adc_model(hw), ADCModelInterface)
    with pytest.raises(ConfigError, match="unknown device model"):
        device_model(hw, "nope")
    with pytest.raises(ConfigError, match="unknown ADC model"):
        adc_model(hw, "nope")


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_draws_are_kd_wd_then_kc_from_one_generator(seed):
    hw = _configs()["chip"]
    d = hw.device
    rng = np.random.default_rng(seed)
    kd = float(np.exp(d.d2d_rate_sigma * rng.standard_normal()))
    wd = float(np.exp(d.d2d_window_sigma * rng.standard_normal()))
    kc = np.exp(d.c2c_sigma * rng.standard_normal(17))
    var = draw_variation(hw, 17, seed)
    assert (var.kd, var.wd) == (kd, wd)
    np.testing.assert_array_equal(var.kc, kc)
    # drawn one pulse at a time (as write-and-verify does), the stream is the same
    model, rng = device_model(hw), np.random.default_rng(seed)
    assert model.draw_device(rng) == (kd, wd)
    one_by_one = np.concatenate([model.draw_cycle(rng, 1) for _ in range(17)])
    np.testing.assert_array_equal(one_by_one, kc)


def test_nominal_device_has_no_variation():
    var = draw_variation(preset("chip"), 3, None)
    assert (var.kd, var.wd) == (1.0, 1.0)
    np.testing.assert_array_equal(var.kc, np.ones(3))


def test_window_factor_is_the_surrogates_and_the_references():
    pytest.importorskip("torch")
    from surrogate.program_model import _window_factor

    for hw in _configs().values():
        d, model = hw.device, device_model(hw)
        u = np.linspace(0.3 * d.n_min, 1.2 * d.n_max, 301)
        for pol in (-1, 1):
            np.testing.assert_array_equal(model.window_factor(pol, u),
                                          _window_factor(hw, pol, u))
        wd = 1.07
        np.testing.assert_array_equal(
            model.window_factor(1, u, wd),
            np.maximum(0.0, 1.0 - (u / (d.n_max * wd)) ** d.p_window_set))
        np.testing.assert_array_equal(
            model.window_factor(-1, u, wd),
            np.maximum(0.0, 1.0 - (d.n_min * wd / u) ** d.p_window_reset))
        assert model.window(wd) == (d.n_min * wd, d.n_max * wd)


def test_adc_transfer_and_sweep_are_unchanged():
    for hw in _configs().values():
        adc, a = adc_model(hw), hw.adc
        d = np.linspace(-0.05, 1.05, 1001)
        lsb = a.v_full_scale_v / 2 ** a.bits
        u = np.clip(d / a.v_full_scale_v, 0.0, 1.0)
        old = np.clip(np.floor(d / lsb + 0.5 + 0.002 / lsb + 0.3 * 4.0 * u * (1.0 - u)),
                      0, 2 ** a.bits - 1).astype(np.int64)
        np.testing.assert_array_equal(quantize(a, d, offset_v=0.002, inl_lsb=0.3), old)
        assert (adc.lsb_v, adc.top_code) == (lsb, 2 ** a.bits - 1)
        np.testing.assert_array_equal(adc.ideal_transitions_v(),
                                      (np.arange(1, 2 ** a.bits) - 0.5) * lsb)
    assert d_range(_configs()["other"], ADCGrid()) == (-0.018380859375, 1.015798828125, 2119)


class LinearDevice:
    """A minimal second device model: a linear resistor ``G = g_per_n * n`` whose state
    moves at a constant rate under a voltage; enough to show where a model plugs in."""

    g_per_n = 5e-6  # S per state unit

    def __init__(self, params: DeviceParams) -> None:
        self.params = params

    def library(self) -> str:
        g = self.g_per_n
        return "\n".join([
            "* linear test device",
            ".subckt rram_dyn te be kc params: n0=1 kd=1 wd=1",
            "Cx x 0 1 IC={n0}",
            "Bx 0 x I={V(kc)*kd*1e6*V(te,be)}",
            f"Bd te be I={{{g}*V(x)*V(te,be)}}",
            "Vth th 0 0",
            ".ends rram_dyn",
            ".subckt rram_frozen te be params: n=1",
            f"Rd te be {{1/({g}*n)}}",
            ".ends rram_frozen",
        ]) + "\n"

    def window(self, wd=1.0):
        return self.params.n_min * wd, self.params.n_max * wd

    def window_factor(self, polarity, n, wd=1.0):
        return np.ones_like(np.asarray(n, float))

    def draw_device(self, rng):
        return 1.0, float(rng.uniform(0.9, 1.1))

    def draw_cycle(self, rng, n_pulses):
        return np.ones(n_pulses)

    def small_signal_conductance(self, n):
        return self.g_per_n * np.asarray(n, float)

    def current_at(self, v, n, temp_k):
        return self.g_per_n * np.asarray(n, float) * np.asarray(v, float)

    def rate(self, v, n, i, temp_k, *, kc=1.0, kd=1.0, wd=1.0):
        return kc * kd * 1e6 * np.asarray(v, float) * np.ones_like(np.asarray(n, float))

    def relaxation_rate(self, n, temp_k, kd=1.0):
        return np.zeros_like(np.asarray(n, float))            # holds its state unbiased


@pytest.fixture
def linear_device(monkeypatch):
    monkeypatch.setitem(device_models.DEVICE_MODELS, device_models.DEFAULT_DEVICE_MODEL,
                        LinearDevice)
    return LinearDevice


def test_a_second_device_model_plugs_into_decks_reference_and_draws(linear_device):
    hw = preset("chip")
    model = device_model(hw)
    assert isinstance(model, linear_device) and isinstance(model, DeviceModelInterface)
    small, states, x = _small(hw)
    for deck in (render_cell_read_deck(small, states.ravel()),
                 render_tile_deck(small, states, x),
                 render_pulse_deck(hw, (Pulse("set", 2.2, 1e-7),), n0=1.0).text):
        assert model.library() in deck and "bulk-switching" not in deck
    ref = DeviceModel(model)
    n = np.linspace(hw.device.n_min, hw.device.n_max, 5)
    # no self-heating term in this model's current: the reference's read is G n exactly
    np.testing.assert_allclose(ref.read_conductance(n), linear_device.g_per_n * n, rtol=1e-12)
    var = draw_variation(hw, 2, seed=3)
    assert var.kd == 1.0 and 0.9 <= var.wd <= 1.1


@pytest.mark.spice
def test_a_second_device_model_reads_the_same_in_ngspice(linear_device, runner):
    hw = preset("chip")
    model = device_model(hw)
    deck = "\n".join(["linear device", ".options klu", model.library(), "Vd te 0 DC 0.1",
                      "Xd te 0 rram_frozen n=2.5", ".op", ".save i(vd)", ".end"])
    i_spice = -float(runner.run(deck, name="linear_device")["i(vd)"][-1])
    i_ref = float(DeviceModel(model).current(0.1, 2.5)[0])
    assert i_spice == pytest.approx(i_ref, rel=1e-6)  # a linear resistor: solver tolerance


class _TaggedADC(MultiCycleSamplingADC):
    """The shipped ADC with a marked quantizer text and a transfer one code lower."""

    def quantizer_subckt(self) -> str:
        return "* tagged quantizer\n" + super().quantizer_subckt()

    def quantize(self, d_v, *, offset_v=0.0, inl_lsb=0.0):
        return np.maximum(super().quantize(d_v, offset_v=offset_v, inl_lsb=inl_lsb) - 1, 0)


def test_a_second_adc_model_plugs_into_decks_and_reference(monkeypatch):
    hw = preset("chip")
    small, states, x = _small(hw)
    g = np.full((small.array.rows, small.array.cols), 2e-5)
    before = ideal_codes(small, g, x)
    monkeypatch.setitem(adc_models.ADC_MODELS, adc_models.DEFAULT_ADC_MODEL, _TaggedADC)
    assert "* tagged quantizer" in render_tile_deck(small, states, x)
    surface = get_surface("adc")
    assert all("* tagged quantizer" in text
               for text in surface.netlists(small, surface.grid("tiny"))[1:])
    np.testing.assert_array_equal(ideal_codes(small, g, x), np.maximum(before - 1, 0))
