"""Bitstream and entropy-coding core.

container  -- the one-file-per-scene container (header + named, CRC-checked components)
serialize  -- exact bytes for tensors / arrays / small state dicts, varints, zlib/lzma fallback
quantize   -- training relaxations of rounding, uniform N-bit scalar quantisation
entropy    -- GaussianConditional, FactorizedPrior, uniform coding (rate estimates + real coding)
arith      -- the integer-CDF arithmetic coder under entropy (torchac, escapes for any int)
bitpack    -- vectorised variable-width bit packing
"""
