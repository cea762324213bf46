"""The date example: the captioning decoder over a character sequence, normalising dates to ISO.

`generate` makes the data, `model` is the plain nn.Module (no Lightning), `system` and `data`
the Lightning system (with its CLI) and data module, `plot` the attention matrix.
"""
