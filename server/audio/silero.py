"""Silero VAD's network in torch, a block of frames per call: the package's own
sequence model, computed in fewer, larger steps.

silero-vad's "sequence" ONNX model runs a block of frames per call, but ONNX
Runtime runs its convolutions frame by frame: each frame's STFT and encoder
convolutions are matrix products four columns wide, and that is ~85% of its time.
Here the same network runs each layer over the whole block at once (the STFT as an
FFT of the window the model's basis is built from, each convolution as one matrix
product per output position that skips the padding's zeros), and only the LSTM goes
frame by frame: 4x less CPU per audio second on one thread than the ONNX model (3.6
against 14.6 ms per 256 frames, ~2,200x real time), the same probabilities to 1e-6
(``tests/audio/test_silero.py`` holds it to the ONNX model's).

The weights are the package's, read from its TorchScript model (the same weights as
its ONNX models). CPU-bound: call from a worker thread, never the event loop.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
import torch

CONTEXT = 64
"""Samples of the previous frame each frame is led by."""
FRAME = 512
"""Samples per frame at 16 kHz (32 ms)."""
STATE_SHAPE = (1, 1, 128)
"""The LSTM's hidden and cell state, each."""

_WINDOW, _HOP, _REFLECT, _WINDOWS = 256, 128, 64, 4
"""Each frame's spectrum: four 256-sample windows, 128 apart, over its 576 samples
and the last 64 of them mirrored past its end."""


class SileroNetwork:
    """Speech probabilities of consecutive frames, the LSTM state carried across calls."""

    def __init__(self) -> None:
        path = resources.files("silero_vad.data").joinpath("silero_vad.jit")
        weights = {name.removeprefix("_model."): value for name, value in
                   torch.jit.load(str(path), map_location="cpu").state_dict().items()}
        # The STFT basis is a periodic Hann window times the DFT: its cosine row for
        # frequency 0 is the window.
        self.window = weights["stft.forward_basis_buffer"][0, 0].clone()
        length = _WINDOWS
        self.encoder = []
        for i, stride in enumerate((1, 2, 2, 1)):
            layer = _Convolution(weights[f"encoder.{i}.reparam_conv.weight"],
                                 weights[f"encoder.{i}.reparam_conv.bias"], stride, length)
            self.encoder.append(layer)
            length = layer.positions
        self.lstm = torch.nn.LSTM(128, 128)
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(self.lstm, f"{name}_l0").data = weights[f"decoder.rnn.{name}"]
        self.lstm.eval()
        self.output = (weights["decoder.decoder.2.weight"][0, :, 0],
                       weights["decoder.decoder.2.bias"])

    def initial_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.zeros(STATE_SHAPE), torch.zeros(STATE_SHAPE)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, state: tuple[torch.Tensor, torch.Tensor],
                 ) -> tuple[np.ndarray, tuple[torch.Tensor, torch.Tensor]]:
        """(frames, CONTEXT + FRAME) float32 samples -> (frames,) probabilities, and the
        state after the last frame."""
        samples = torch.from_numpy(frames)
        # The mirror by hand: F.pad's reflect mode took 8x as long (~4% of the call).
        x = torch.cat([samples, samples[:, -_REFLECT - 1 : -1].flip(1)], dim=1)
        spectrum = torch.fft.rfft(x.unfold(1, _WINDOW, _HOP) * self.window)
        # The magnitude from its parts: complex abs() takes 2.5x as long here.
        spectrum = (spectrum.real.square() + spectrum.imag.square()).sqrt()
        hidden = spectrum.reshape(len(frames), -1)  # each frame's windows side by side
        for layer in self.encoder:
            hidden = layer(hidden)
        out, state = self.lstm(hidden[:, None], state)  # one step per frame
        weight, bias = self.output
        probs = torch.sigmoid(out[:, 0].relu() @ weight + bias)
        return probs.numpy(), state


class _Convolution:
    """One of the encoder's convolutions (kernel 3, padding 1, then ReLU) over a frame's
    few positions, channels last: each output position is one matrix product of the
    inputs it sees and the kernel taps that see them. As a conv1d, a sixth to two
    thirds of each layer's products were with the padding's zeros, and the small
    convolutions ran at half the speed of a matrix product."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, stride: int,
                 length: int) -> None:
        channels = weight.shape[1]
        self.bias = bias
        self.parts: list[tuple[int, int, torch.Tensor]] = []
        taps_of: dict[tuple[int, ...], torch.Tensor] = {}
        for position in range((length - 1) // stride + 1):
            first, end = max(0, position * stride - 1), min(length, position * stride + 2)
            taps = tuple(q - position * stride + 1 for q in range(first, end))
            if taps not in taps_of:
                taps_of[taps] = torch.cat([weight[:, :, k].T for k in taps]).contiguous()
            self.parts.append((first * channels, end * channels, taps_of[taps]))
        self.positions = len(self.parts)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(frames, length * in channels) -> (frames, positions * out channels)"""
        outs = [torch.addmm(self.bias, x[:, first:end], taps).relu_()
                for first, end, taps in self.parts]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
