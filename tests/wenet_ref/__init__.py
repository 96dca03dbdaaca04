"""A faithful PyTorch transcription of WeNet's U2++ (MoE) model: the numerical reference.

Transcribed from github.com/wenet-e2e/wenet at commit 015469960db73eb19c49a48c020d5ac9db69bae5
(2025-12-19; model code under wenet/models/transformer/, masks in wenet/utils/mask.py). Class and
attribute names are WeNet's, so `state_dict()` keys are exactly a WeNet checkpoint's.

Modules: modules.py (attention, FFN / MoE FFN, positional encodings, CMVN, masks, conv2d
subsampling, convolution module, Conformer block), encoder.py (ConformerEncoder with streaming),
decoder.py (TransformerDecoder, BiTransformerDecoder), asr_model.py (CTC, label smoothing,
ASRModel with WeNet's decoding, init_asr_model from a train YAML dict).

Checked once against WeNet's own code at that commit (its package imported with stand-ins for the
audio/language modules it imports but these classes do not use: librosa, torchaudio, langid,
whisper), for conv2d/conv2d6/conv2d8, dense and MoE, with and without biases, special tokens
sos = eos = 2: same state_dict keys in the same order and shapes; with the same weights, encoder
output (full context, chunk 4, chunk 2 with 1 left chunk), forward_chunk_by_chunk, the training
losses under the same dynamic-chunk draws, and the tokens and scores of all four decoding modes
(full and simulated streaming) bit-identical (max difference 0.0).

Left out on purpose (U2++ MoE does not use them): other encoders (Transformer, Squeezeformer,
Branchformer, E-Branchformer, Efficient Conformer), other decoders and model types (transducer,
Paraformer, CTL, k2), batch-norm and rms-norm variants, sdpa attention, GQA/MQA heads, rope and
Shaw attention, linear / conv1d / stack-frames subsampling, gradient checkpointing, batched GPU
streaming with tensor offsets, tied word embeddings, LoRA, context biasing, JIT/ONNX export paths.
"""
