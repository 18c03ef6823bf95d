"""Method ``mean-colour``: the toy method of the README's "Adding a method", file for file.

It "trains" one colour (the mean training pixel, times the spec's ``gain``), stores it at the
rate point's ``bits`` per channel and renders it everywhere. The files a method adds: this
package (in evalkit: ``evalkit/methods/<name>/``), its spec (``mean-colour.toml`` here, in
evalkit ``methods/<name>.toml``) and one registry line (the test uses ``registry.registered``).
"""
from __future__ import annotations

import numpy as np
import torch

from evalkit.codec.container import Bitstream, BitstreamError
from evalkit.codec.serialize import pack_tensors, unpack_tensors
from evalkit.data.scene import Camera, Scene
from evalkit.methods.base import Method, Model, RatePoint, TrainContext, TrainedModel


class MeanColourModel(TrainedModel):
    def __init__(self, colour: torch.Tensor, bits: int = 8) -> None:
        self.colour, self.bits = colour, bits

    def render(self, camera: Camera, t: float) -> torch.Tensor:
        return self.colour.expand(camera.height, camera.width, 3)

    def num_primitives(self) -> int:
        return 1

    def quantized(self) -> torch.Tensor:
        levels = 2 ** self.bits - 1
        return torch.round(self.colour.clamp(0, 1) * levels).to(torch.int32)

    def encode(self) -> Bitstream:
        data, layout = pack_tensors({"colour": self.quantized()}, "int32")
        return Bitstream(header={"method": "mean-colour", "bits": self.bits, "layout": layout},
                         components={"colour": data})

    def quality_stages(self):
        return [("unquantised", self.render)]


class MeanColour(Method):
    name = "mean-colour"

    def train(self, scene: Scene, rate: RatePoint, ctx: TrainContext) -> MeanColourModel:
        mean = np.mean([f.load().reshape(-1, 3).mean(axis=0) for f in scene.train], axis=0)
        colour = torch.as_tensor(mean * float(ctx.config["gain"]), dtype=torch.float32)
        model = MeanColourModel(colour, int(rate.params["bits"]))
        model.iterations = 1
        return model

    def decode(self, bits: Bitstream, device: torch.device, source: str = "<bitstream>") -> Model:
        try:
            q = unpack_tensors(bits.component("colour", source), bits.header["layout"])["colour"]
            levels = 2 ** int(bits.header["bits"]) - 1
        except (KeyError, ValueError) as exc:
            raise BitstreamError(source, f"not a mean-colour bitstream: {exc}") from None
        return MeanColourModel(q.float().to(device) / levels, int(bits.header["bits"]))
