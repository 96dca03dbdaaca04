"""U2++ (WeNet) speech recognition: Conformer encoder, CTC head, bidirectional attention decoder."""
