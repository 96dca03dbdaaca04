"""HuBERT (transformers' HubertModel semantics): a waveform encoder for speech units and features."""
