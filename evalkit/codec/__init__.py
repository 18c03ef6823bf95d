"""Bitstream and entropy-coding core.

container  -- the one-file-per-scene container (header + named, CRC-checked components)
serialize  -- weights and tensors as bytes (the one place: raw with the layout elsewhere, or
              self-describing), varints, zlib/lzma fallback
intcode    -- integer streams: fixed-length, histogram / run-length entropy coded, joined streams
canonical  -- per-channel N-bit quantisation and coding of canonical Gaussian attributes
quantize   -- training relaxations of rounding, uniform N-bit scalar quantisation
entropy    -- GaussianConditional, FactorizedPrior, uniform coding (rate estimates + real coding)
arith      -- the integer-CDF arithmetic coder under entropy (torchac, escapes for any int)
bitpack    -- vectorised variable-width bit packing
"""
