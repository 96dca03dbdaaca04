"""U2++ (WeNet): Conformer encoder (encoder.py, streaming.py), its masks and subsampling; the
attention decoders, CTC and losses live beside them."""
