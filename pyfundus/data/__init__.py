"""Data: real sample photos (samples), synthetic fundi (synth), degradations (degrade),
labelled datasets and splits (datasets), and the FQS-proxy builder (proxy)."""
