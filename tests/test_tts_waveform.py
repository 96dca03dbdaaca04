"""Speech out: batched vocoder synthesis against one utterance at a time, and `most generate tts`
through a vocoder to numbered WAV files."""

import numpy as np
import soundfile as sf
from cli_check import cli_error
from data_corpus import NUM_UNITS, make_prepared, make_tokenizer, tiny_most
from flax import nnx
from test_vocoder import GAN_TINY, tiny_cfg

from most_jax import cli
from most_jax.checkpoint.params_io import save_params
from most_jax.infer.vocoder import synthesize, synthesize_batch
from most_jax.models.vocoder.model import Vocoder

# frames at an utterance's end that padding can reach: conv_pre (k7) and, after the upsamplers,
# ResBlocks and conv_post spanning well under a frame each at this hop
EDGE_FRAMES = 4


def _vocoder(num_units: int):
    cfg = tiny_cfg(**GAN_TINY, num_units=num_units)  # the smallest vocoder: fast to compile
    return cfg, Vocoder(cfg.model, rngs=nnx.Rngs(3))


def test_batched_synthesis_equals_single_utterances_away_from_the_padding():
    cfg, vocoder = _vocoder(11)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 11, 16), rng.integers(0, 11, 9)]  # the first fills its bucket: no padding
    batch = synthesize_batch(vocoder.generator, frames, use_durations=False, bucket=16)
    hop = cfg.model.hop
    for units, wave in zip(frames, batch):
        alone = synthesize(vocoder.generator, units, use_durations=False)
        assert wave.shape == alone.shape == (len(units) * hop,)
        keep = len(alone) if len(units) == 16 else (len(units) - EDGE_FRAMES) * hop
        np.testing.assert_allclose(wave[:keep], alone[:keep], atol=1e-5)
    dedup = [np.array([1, 4, 2, 7]), np.array([3, 5])]
    expanded = synthesize_batch(vocoder.generator, dedup, bucket=4)
    alone = synthesize(vocoder.generator, dedup[0])  # fills its bucket: the same durations
    assert expanded[0].shape == alone.shape and expanded[1].size % hop == 0 and expanded[1].size >= 2 * hop


def test_generate_tts_writes_numbered_waveforms(tmp_path, capsys):
    prepared = make_prepared(tmp_path / "prepared", make_tokenizer(tmp_path / "tok"), num_pairs=2, num_text=1,
                             num_dialogs=1)
    cfg, model = tiny_most(prepared)
    save_params(tmp_path / "most", cfg, nnx.state(model, nnx.Param).to_pure_dict())
    vcfg, vocoder = _vocoder(NUM_UNITS)
    save_params(tmp_path / "voc", vcfg, nnx.state(vocoder, nnx.Param).to_pure_dict())
    args = ["generate", "tts", str(tmp_path / "most"), "the red dog", "a small cat runs", "--max-new-tokens", "6",
            "--batch-size", "2", "--vocoder", str(tmp_path / "voc"), "--out", str(tmp_path / "speech.wav")]
    assert cli.main(args) == 0
    for i in (1, 2):
        wave, rate = sf.read(tmp_path / f"speech_{i}.wav")
        assert rate == 16000 and wave.size > 0 and wave.size % vcfg.model.hop == 0
    assert not (tmp_path / "speech.wav").exists()
    assert cli.main(args[:3] + ["the red dog", "--max-new-tokens", "6", "--out", str(tmp_path / "u.npy")]) == 0
    units = np.load(tmp_path / "u.npy")
    assert units.dtype == np.int32 and 0 < units.size <= 6
    wrong_cfg, wrong = _vocoder(11)
    save_params(tmp_path / "voc11", wrong_cfg, nnx.state(wrong, nnx.Param).to_pure_dict())
    cli_error(args[:-4] + ["--vocoder", str(tmp_path / "voc11"), "--out", str(tmp_path / "x.wav")],
              "--vocoder .*voc11: 11 units, the checkpoint speaks 50")
    cli_error(args[:3] + ["the red dog", "--out", str(tmp_path / "x.wav")], "--out .*x.wav: the name must end in .npy")
