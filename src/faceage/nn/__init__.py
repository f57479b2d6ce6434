"""Building blocks shared by every face-aging method: modulated convolutions and residual blocks."""
