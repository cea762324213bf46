"""Show, Attend and Tell image captioning with attention overlays."""

__version__ = "0.1.0"
